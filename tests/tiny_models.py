"""A tiny Phi-3 model and tokenizer built locally from a config, for tests that must not touch a hub.

Shared by the training and merging tests. The API is stable: ``build_tiny_phi3(path, seed=0)``
writes a complete Hugging Face model folder (``config.json``, ``model.safetensors``, tokenizer files
with a chat template that has ``{% generation %}`` markers) and returns ``path``. Passing models by
*path* matters: TRL's DPO trainer reloads its reference model from ``config._name_or_path``.

The tokenizer is a byte-level BPE trained in a fraction of a second on a small built-in corpus, so
any text (clinical words, JSON punctuation) round-trips; the model has ~100k parameters.
"""

from __future__ import annotations

from pathlib import Path

#: Phi-3's chat layout, with the assistant turn wrapped in generation markers (assistant-only loss).
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>\n' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

#: A Phi-4-mini-style layout: no newline after the role tag or the end token, unlike Phi-3's. Not the
#: shipped Phi-3 copy, so SFT cannot use that copy's generation markers and masks by rendered prefixes.
PHI4_STYLE = "{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

_CORPUS = [
    "Patient is a 67-year-old male admitted with chest pain and shortness of breath.",
    "Discharge diagnosis: community-acquired pneumonia. Medications: amoxicillin 500 mg three times daily.",
    "CT chest without contrast shows a 4 mm nodule in the right upper lobe. No pleural effusion.",
    "Impression: no acute cardiopulmonary process. Follow-up imaging in 12 months.",
    '{"diagnosis": "pneumonia", "medications": [{"name": "amoxicillin", "dose": "500 mg"}], "ok": true}',
    "Question: What was the admitting diagnosis? Answer: Heart failure exacerbation.",
    "Summarize the note. Extract the entities. List the relations between drugs and conditions.",
    "History of type 2 diabetes mellitus, hypertension and chronic kidney disease stage 3.",
    "0123456789 []{}:,.\"'-_/()%<>|=+ abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def build_tiny_tokenizer(path: Path, *, chat_template: str | None = TINY_CHAT_TEMPLATE, extra_special_tokens: tuple[str, ...] = ()):
    """Train and save a small byte-level BPE tokenizer with the Phi-3 chat template (or ``chat_template``); return it.

    ``extra_special_tokens`` are added as special tokens (a template's own end-of-turn marker, say).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|end|>",
        pad_token="<|pad|>",
        bos_token="<|endoftext|>",
    )
    if extra_special_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special_tokens)})
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(path)
    return tokenizer


def build_tiny_phi3(path: Path, seed: int = 0, *, chat_template: str | None = TINY_CHAT_TEMPLATE, extra_special_tokens: tuple[str, ...] = ()) -> Path:
    """Write a randomly initialised tiny Phi-3 model + tokenizer to ``path`` and return ``path``.

    Different ``seed`` values give different weights with the same architecture and tokenizer,
    which is what the merging tests need for several "experts".
    """
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(path, chat_template=chat_template, extra_special_tokens=extra_special_tokens)
    config = Phi3Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    return path


def with_template(base: Path, folder: Path, template: str | None) -> Path:
    """A copy of the tiny model folder ``base`` whose tokenizer carries ``template`` (or none); made once."""
    import shutil

    from transformers import AutoTokenizer

    if not folder.exists():
        shutil.copytree(base, folder)
        (folder / "chat_template.jinja").unlink(missing_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.chat_template = template
        tokenizer.save_pretrained(folder)
    return folder
