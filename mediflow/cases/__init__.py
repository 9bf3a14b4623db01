"""Clinical cases: the patient and conditions behind every generated document.

``book.py`` loads the data (``taxonomies/cases/``: profiles, assignments, rules, drugs, synonyms),
``case.py`` is the case itself, ``rules.py`` checks a case's coherence, ``sampler.py`` draws one
case per plan item, and ``mentions.py`` tells whether a text names a case's conditions.
"""

from mediflow.cases.book import CaseBook, load_case_book
from mediflow.cases.case import Case, Condition
from mediflow.cases.sampler import CaseSampler

__all__ = ["Case", "CaseBook", "CaseSampler", "Condition", "load_case_book"]
