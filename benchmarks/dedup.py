"""Near-dedup benchmark: synthetic clinical records with planted duplicates, at 100k / 1M / 2.5M.

Records are built from clinical sentence templates with random findings and values. Half of the
originals reuse the sentence templates (same sentences, same order) of a recent original about
another patient, so distinct records are similar the way template-driven synthetic notes are; a
known share of all records (10% by default) are planted near-duplicates of an original with
word edits, synonyms, typos, reordered sentences and/or changed case and punctuation.

For each size a child process generates the set (kept under ``--data`` and reused), and a fresh
child runs the whole ``dedup`` stage on it (read Parquet, cluster, write kept + rejects): its wall
time, its peak RSS, and the pairwise precision and recall of the clusters it found (rejects'
``match``) against the planted ones. A naive all-pairs ``rapidfuzz`` baseline (``cdist`` +
components, same scorer and threshold) runs on small sizes, each in its own child, and its growth
is extrapolated quadratically.

    flock /tmp/mediflow-bench.lock python benchmarks/dedup.py --sizes 100000 1000000 2500000 --baseline 1000 2000 4000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

AGES = list(range(18, 96))
SEXES = ["male", "female", "man", "woman"]
COMPLAINTS = ["chest pain", "shortness of breath", "abdominal pain", "fever and chills", "headache", "syncope", "palpitations",
              "cough", "back pain", "dizziness", "nausea and vomiting", "leg swelling", "confusion", "weakness", "rash",
              "dysuria", "hematuria", "melena", "hemoptysis", "joint pain", "weight loss", "fatigue", "seizure", "vision loss"]
HISTORY = ["hypertension", "type 2 diabetes mellitus", "chronic kidney disease stage 3a", "atrial fibrillation", "COPD", "asthma",
           "coronary artery disease", "heart failure with reduced ejection fraction", "hypothyroidism", "obesity", "depression",
           "prior stroke", "hyperlipidemia", "GERD", "osteoarthritis", "cirrhosis", "HIV on antiretroviral therapy",
           "rheumatoid arthritis", "sleep apnea", "peripheral artery disease", "breast cancer in remission", "gout", "anemia"]
DRUGS = ["metformin", "lisinopril", "atorvastatin", "apixaban", "warfarin", "furosemide", "metoprolol", "insulin glargine",
         "levothyroxine", "amlodipine", "sertraline", "omeprazole", "albuterol", "prednisone", "ceftriaxone", "vancomycin",
         "piperacillin-tazobactam", "heparin", "aspirin", "clopidogrel", "spironolactone", "gabapentin", "tramadol", "allopurinol"]
FINDINGS = ["bibasilar crackles", "a grade 2/6 systolic murmur", "right lower quadrant tenderness", "pitting edema to the knees",
            "decreased breath sounds at the left base", "jugular venous distension", "a petechial rash on the lower legs",
            "left-sided facial droop", "guarding without rebound", "an irregularly irregular rhythm", "scleral icterus",
            "diffuse wheezing", "costovertebral angle tenderness", "a tender, warm right calf", "nuchal rigidity",
            "dry mucous membranes", "an S3 gallop", "hepatomegaly", "clubbing", "a pulsatile abdominal mass"]
LABS = ["troponin", "creatinine", "potassium", "sodium", "hemoglobin", "white cell count", "lactate", "BNP", "lipase", "INR",
        "glucose", "ALT", "bilirubin", "procalcitonin", "D-dimer", "TSH", "albumin", "platelets"]
IMAGING = ["chest X-ray", "CT of the abdomen", "CT angiogram of the chest", "renal ultrasound", "echocardiogram", "MRI of the brain",
           "CT head without contrast", "right upper quadrant ultrasound", "lower extremity duplex", "abdominal X-ray"]
IMAGING_RESULTS = ["a right lower lobe consolidation", "no acute abnormality", "a small left pleural effusion", "dilated loops of small bowel",
                   "an ejection fraction of 30 percent", "an acute infarct in the left MCA territory", "gallstones with wall thickening",
                   "a segmental pulmonary embolism", "moderate hydronephrosis", "a deep vein thrombosis in the popliteal vein",
                   "free air under the diaphragm", "cardiomegaly with vascular congestion"]
DIAGNOSES = ["community-acquired pneumonia", "acute decompensated heart failure", "acute appendicitis", "sepsis of urinary source",
             "non-ST elevation myocardial infarction", "diabetic ketoacidosis", "acute ischemic stroke", "acute cholecystitis",
             "pulmonary embolism", "acute kidney injury", "small bowel obstruction", "COPD exacerbation", "cellulitis",
             "upper gastrointestinal bleed", "acute pancreatitis", "pyelonephritis", "new-onset atrial fibrillation"]
SERVICES = ["medicine", "cardiology", "general surgery", "the intensive care unit", "neurology", "the step-down unit", "nephrology"]
_CHUNK = 200_000
TIMES = ["two hours", "three days", "one week", "since this morning", "two weeks", "several months", "24 hours", "five days"]

SENTENCES = [
    "The patient is a {age}-year-old {sex} who presents with {complaint} for {time}.",
    "{age}-year-old {sex} with a history of {hx} and {hx2} presenting with {complaint}.",
    "Past medical history is notable for {hx}, {hx2} and {hx3}.",
    "Home medications include {drug}, {drug2} and {drug3}.",
    "She reports that the {complaint} started {time} ago and has been getting worse.",
    "He denies {complaint2} but endorses {complaint3}.",
    "On examination there was {finding} and {finding2}.",
    "Vital signs: temperature {temp} C, heart rate {hr}, blood pressure {sbp}/{dbp}, oxygen saturation {spo2} percent on room air.",
    "Laboratory studies showed a {lab} of {val} and a {lab2} of {val2}.",
    "The {lab} was elevated at {val} and trended to {val2} on repeat testing.",
    "A {imaging} demonstrated {imaging_result}.",
    "{imaging} was obtained and showed {imaging_result}.",
    "The working diagnosis is {dx}, with {dx2} also considered.",
    "Assessment: {dx} in the setting of {hx}.",
    "Plan: start {drug} {dose} mg daily, hold {drug2}, and repeat the {lab} in the morning.",
    "She was admitted to {service} for further management of {dx}.",
    "He was treated with intravenous {drug} and {drug2} with improvement in {complaint}.",
    "Consults were placed to {service} given concern for {dx2}.",
    "The family was updated at the bedside and agrees with the plan.",
    "Follow up with the primary care physician in {days} days with a repeat {lab}.",
    "Code status was confirmed as full code.",
    "On day {day} of admission the patient developed {complaint2} and a {imaging} was repeated.",
    "Discharge medications: {drug} {dose} mg twice daily and {drug2} as needed.",
    "The patient was counseled on {hx} management and warning signs of {dx}.",
]
INSTRUCTIONS = [
    "Summarize the key findings of this {doc} for the {service} team.",
    "List the active problems documented in this {doc} with their status.",
    "Extract every medication with dose and frequency from this {doc} as JSON.",
    "Answer: what is the most likely diagnosis in this {doc}, and why?",
    "Assign the ICD-10-CM codes supported by this {doc}.",
    "Identify any factual errors in this {doc} and correct them.",
    "Write a short handover note from this {doc} for the night team.",
    "Which laboratory results in this {doc} are abnormal? Explain their significance.",
]
DOCS = ["discharge summary", "admission note", "progress note", "emergency department note", "consult note"]
TASKS = ["summarization", "problem_list", "medication_extraction", "clinical_qa", "coding", "error_correction", "handover", "lab_interpretation"]
SYNONYMS = {"patient": "pt", "presents": "presented", "history": "hx", "started": "began", "worse": "worsening", "showed": "revealed",
            "demonstrated": "showed", "admitted": "transferred", "treated": "managed", "improvement": "resolution", "denies": "reports no",
            "elevated": "raised", "examination": "exam", "medications": "meds", "repeat": "follow-up", "daily": "once a day",
            "notable": "significant", "further": "ongoing", "morning": "am", "family": "daughter"}


def _fill(template: str, rng: random.Random) -> str:
    values = {
        "age": rng.choice(AGES), "sex": rng.choice(SEXES), "time": rng.choice(TIMES), "service": rng.choice(SERVICES),
        "temp": f"{rng.uniform(36.0, 40.2):.1f}", "hr": rng.randint(48, 150), "sbp": rng.randint(80, 190), "dbp": rng.randint(40, 110),
        "spo2": rng.randint(82, 100), "val": f"{rng.uniform(0.1, 300):.1f}", "val2": f"{rng.uniform(0.1, 300):.1f}",
        "dose": rng.choice([2.5, 5, 10, 20, 25, 40, 50, 100, 500, 1000]), "days": rng.randint(2, 30), "day": rng.randint(2, 9),
        "imaging": rng.choice(IMAGING), "imaging_result": rng.choice(IMAGING_RESULTS), "doc": rng.choice(DOCS),
    }
    for name, pool in (("complaint", COMPLAINTS), ("hx", HISTORY), ("drug", DRUGS), ("finding", FINDINGS), ("lab", LABS), ("dx", DIAGNOSES)):
        picks = rng.sample(pool, 3)
        values[name], values[f"{name}2"], values[f"{name}3"] = picks
    return template.format(**values)


Shape = tuple[int, tuple[int, ...]]  # (instruction template, sentence templates in order)


def new_shape(rng: random.Random) -> Shape:
    return rng.randrange(len(INSTRUCTIONS)), tuple(rng.sample(range(len(SENTENCES)), rng.randint(7, 11)))


def original(shape: Shape, rng: random.Random) -> tuple[str, str, str]:
    """A fresh (instruction, document, task): the shape's templates filled with random findings and values.

    Two originals of one shape are distinct-but-similar: the same sentences in the same order about
    different patients, which is what template-driven synthetic data looks like.
    """
    instruction_index, sentence_indices = shape
    sentences = [_fill(SENTENCES[i], rng) for i in sentence_indices]
    return _fill(INSTRUCTIONS[instruction_index], rng), " ".join(sentences), TASKS[instruction_index]


def perturb(instruction: str, document: str, rng: random.Random) -> tuple[str, str, str]:
    """A planted near-duplicate: word edits, reordered sentences and/or surface changes; returns the kind too."""
    kind = rng.choice(["edit", "reorder", "surface", "edit+reorder", "typo"])
    sentences = document.split(". ")
    if "reorder" in kind:
        rng.shuffle(sentences)
    document = ". ".join(sentences)
    if "edit" in kind:
        words = document.split(" ")
        for _ in range(rng.randint(1, 5)):
            i = rng.randrange(len(words))
            key = words[i].strip(".,:").lower()
            if key in SYNONYMS:
                words[i] = SYNONYMS[key]
            elif rng.random() < 0.5:
                del words[i]
            else:
                words[i] = words[i][:-1] if len(words[i]) > 3 else words[i]
        document = " ".join(words)
    if kind == "typo":
        words = document.split(" ")
        for i in rng.sample(range(len(words)), 3):
            at = rng.randrange(len(words[i]))
            words[i] = words[i][:at] + words[i][at + 1 :] + ("s" if rng.random() < 0.5 else "")
        document = " ".join(words)
    if kind == "surface":
        document = document.upper() if rng.random() < 0.3 else document.replace(",", "").replace(".", " .")
        instruction = instruction.lower()
    return instruction, document, kind


def synthetic(n: int, duplicate_share: float, seed: int, sibling_share: float = 0.5) -> tuple[pa.Table, np.ndarray]:
    """``n`` records and their planted cluster label (records of one planted cluster share a label).

    ``sibling_share`` of the originals reuse the shape of a recent original (distinct-but-similar);
    a ``duplicate_share`` of all records are planted near-duplicates of an original.
    """
    rng = random.Random(seed)
    instructions, documents, tasks, clusters = [], [], [], []
    chunks: list[pa.Table] = []
    recent: list[Shape] = []
    label = 0
    while len(clusters) < n:
        if recent and rng.random() < sibling_share:
            shape = rng.choice(recent)
        else:
            shape = new_shape(rng)
            recent = [*recent[-99:], shape]
        instruction, document, task = original(shape, rng)
        copies = rng.choice([1, 1, 1, 2, 3]) if rng.random() < duplicate_share / (1 - duplicate_share) / 1.6 else 0
        for variant in range(1 + copies):
            if len(clusters) == n:
                break
            if variant:
                instruction_v, document_v, _ = perturb(instruction, document, rng)
            else:
                instruction_v, document_v = instruction, document
            instructions.append(instruction_v)
            documents.append(document_v)
            tasks.append(task)
            clusters.append(label)
            if len(instructions) == _CHUNK:  # Arrow strings take a third of Python's memory
                chunks.append(pa.table({"instruction": instructions, "input": documents, "task_type": tasks}))
                instructions, documents, tasks = [], [], []
        label += 1
    if instructions:
        chunks.append(pa.table({"instruction": instructions, "input": documents, "task_type": tasks}))
    table = pa.concat_tables(chunks)
    table = table.add_column(0, "id", pa.array([f"r{i:08d}" for i in range(n)]))
    order = np.random.default_rng(seed).permutation(n)  # planted copies are not next to their original
    return table.take(pa.array(order)), np.asarray(clusters, np.int64)[order]


def pair_scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """Pairwise precision and recall of predicted clusters against planted ones."""

    def pairs(sizes: np.ndarray) -> int:
        return int((sizes * (sizes - 1) // 2).sum())

    _, truth_sizes = np.unique(truth, return_counts=True)
    _, predicted_sizes = np.unique(predicted, return_counts=True)
    joint = truth.astype(np.int64) * (int(predicted.max()) + 1) + predicted
    _, joint_sizes = np.unique(joint, return_counts=True)
    together, planted, found = pairs(joint_sizes), pairs(truth_sizes), pairs(predicted_sizes)
    return (together / found if found else 1.0), (together / planted if planted else 1.0)


def _peak_rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)


def generate_child(data: Path, size: int, duplicate_share: float, seed: int) -> None:
    """In a fresh process (so its memory is given back): write the records and their planted clusters."""
    start = time.perf_counter()
    table, clusters = synthetic(size, duplicate_share, seed)
    pq.write_table(table, data / "records.parquet")
    np.save(data / "clusters.npy", clusters)
    (data / "complete").write_text(f"{time.perf_counter() - start:.0f}\n")


def measure_child(data: Path, config_json: str) -> None:
    """In a fresh process: run the dedup stage on the Parquet, then score its clusters against the planted ones."""
    from mediflow.quality.config import DedupConfig
    from mediflow.quality.dedup_stage import run_dedup

    out = data / "dedup-out"
    start = time.perf_counter()
    report = run_dedup(data / "records.parquet", out, DedupConfig(**json.loads(config_json)))
    total_s = time.perf_counter() - start
    peak = _peak_rss_gb()  # before scoring, which is not part of the stage
    rejects = pq.read_table(out / "rejects.parquet", columns=["id", "match"])
    ids = pq.read_table(data / "records.parquet", columns=["id"]).column("id")
    row_of = np.empty(len(ids), np.int64)
    row_of[_id_numbers(ids)] = np.arange(len(ids))
    predicted = np.arange(len(ids))
    predicted[row_of[_id_numbers(rejects.column("id"))]] = row_of[_id_numbers(rejects.column("match"))]
    truth = np.load(data / "clusters.npy")
    precision, recall = pair_scores(truth, predicted)
    print(json.dumps({
        "records": len(ids), "total_s": round(total_s, 1), "peak_rss_gb": peak, "precision": round(precision, 4),
        "recall": round(recall, 4), "dropped": report.dropped, "planted_dropped": int(len(truth) - len(np.unique(truth))),
        **{k: v for k, v in report.details.items() if isinstance(v, dict)},
    }))


def _id_numbers(ids: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``r00001234`` -> 1234 (the benchmark's ids number the records before shuffling)."""
    return pc.cast(pc.utf8_slice_codeunits(ids, 1), pa.int64()).to_numpy()


def baseline_child(size: int, threshold: float, seed: int) -> None:
    """All-pairs rapidfuzz (``cdist`` on all cores) + components: exact but quadratic."""
    from rapidfuzz import fuzz, process

    from mediflow.quality.components import component_labels
    from mediflow.quality.dedup import key_text
    from mediflow.quality.text import normalize_column

    table, truth = synthetic(size, 0.1, seed)
    start = time.perf_counter()
    texts = normalize_column(key_text(table, "pair")).to_pylist()
    matrix = process.cdist(texts, texts, scorer=fuzz.token_sort_ratio, score_cutoff=threshold * 100, dtype=np.uint8, workers=-1)
    left, right = np.nonzero(np.triu(matrix, 1))
    labels = component_labels(size, np.stack([left, right], axis=1))
    elapsed = time.perf_counter() - start
    precision, recall = pair_scores(truth, labels)
    print(json.dumps({"records": size, "total_s": round(elapsed, 1), "peak_rss_gb": _peak_rss_gb(),
                      "precision": round(precision, 4), "recall": round(recall, 4)}))


def _child(*args: str) -> dict:
    child = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if child.returncode:
        print(child.stderr, file=sys.stderr)
        raise SystemExit(child.returncode)
    return json.loads(child.stdout.strip().splitlines()[-1]) if child.stdout.strip() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[100_000], help="record counts for mediflow's dedup")
    parser.add_argument("--baseline", type=int, nargs="*", default=[1_000, 2_000, 4_000], help="record counts for the all-pairs baseline")
    parser.add_argument("--duplicate-share", type=float, default=0.1, help="share of records that are planted copies")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--config", default="{}", help="DedupConfig overrides as JSON, e.g. '{\"num_perm\": 128, \"bands\": 32}'")
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mediflow-dedup-bench",
                        help="where generated record sets are kept (and reused) between runs")
    parser.add_argument("--child", choices=["generate", "measure", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    config = {"scope": "across_tasks", **json.loads(args.config)}
    if args.child == "generate":
        return generate_child(args.folder, args.size, args.duplicate_share, args.seed)
    if args.child == "measure":
        return measure_child(args.folder, json.dumps(config))
    if args.child == "baseline":
        return baseline_child(args.size, config.get("threshold", _default_threshold()), args.seed)

    rows = []
    for size in args.baseline:
        row = _child("--child", "baseline", "--size", str(size), "--seed", str(args.seed), "--config", json.dumps(config))
        print("baseline all-pairs rapidfuzz", json.dumps(row), flush=True)
        rows.append(("all-pairs rapidfuzz", row))
    if len(args.baseline) >= 2:
        a, b = rows[-2][1], rows[-1][1]
        exponent = np.log(b["total_s"] / a["total_s"]) / np.log(b["records"] / a["records"])
        print(f"baseline growth exponent {exponent:.2f}; extrapolated (x^2 from {b['records']}): "
              + ", ".join(f"{s}: {b['total_s'] * (s / b['records']) ** 2 / 3600:.0f} h" for s in (100_000, 1_000_000, 2_500_000)), flush=True)
    for size in args.sizes:
        folder = args.data / f"n{size}-dup{args.duplicate_share}-seed{args.seed}"
        if not (folder / "complete").exists():
            folder.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            _child("--child", "generate", "--folder", str(folder), "--size", str(size),
                   "--duplicate-share", str(args.duplicate_share), "--seed", str(args.seed))
            print(f"generated {size} records in {time.perf_counter() - start:.0f} s", flush=True)
        row = _child("--child", "measure", "--folder", str(folder), "--config", json.dumps(config))
        print("mediflow dedup", json.dumps(row), flush=True)
        rows.append(("mediflow dedup", row))
    print("\n| method | records | wall time (s) | peak RSS (GB) | precision | recall |\n|---|---:|---:|---:|---:|---:|")
    for method, row in rows:
        print(f"| {method} | {row['records']:,} | {row['total_s']} | {row['peak_rss_gb']} | {row['precision']} | {row['recall']} |")


def _default_threshold() -> float:
    from mediflow.quality.config import DedupConfig

    return DedupConfig().threshold


if __name__ == "__main__":
    main()
