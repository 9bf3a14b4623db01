"""Clinical cases: the patient and conditions behind every generated document.

``book.py`` loads the data (``taxonomies/cases/``: profiles, assignments, conditions, names, rules,
drugs, synonyms), ``case.py`` is the case itself, ``guidelines.py`` writes its codes by the ICD-10-CM
guidelines, ``prescribing.py`` gives it medications, ``rules.py`` checks all of it (``Rules.broken``:
which rules a case breaks), ``sampler.py`` draws one case per plan item, ``names.py`` gives the
clinical names of the prompt, and ``mentions.py`` tells whether a text names a case's conditions.
"""

from mediflow.cases.book import CaseBook, load_case_book
from mediflow.cases.case import Case, Condition, Medication
from mediflow.cases.rules import Rules
from mediflow.cases.sampler import CaseSampler

__all__ = ["Case", "CaseBook", "CaseSampler", "Condition", "Medication", "Rules", "load_case_book"]
