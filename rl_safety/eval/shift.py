"""Distribution shift of a dataset from a model: the model's mean token NLL (and perplexity) on
the dataset's responses, the reasoning and the answer separately.

The DGR paper's premise is that external safety traces sit far from the target model's own
distribution; this is the number that shows it. Each example is rendered exactly as SFT would
train on it (`chat.tokenize_example`), so the NLL measured is the loss SFT starts from.
Token-weighted means over the whole dataset: NLL = -sum(log p(token)) / tokens, in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rl_safety.data import chat
from rl_safety.data.safety import SafetyExample
from rl_safety.learner.logprobs import sequence_logprobs


@dataclass
class ShiftReport:
    examples: int
    reasoning_tokens: int
    answer_tokens: int
    reasoning_nll: float  # nats per token
    answer_nll: float
    response_nll: float  # reasoning and answer tokens together

    @property
    def reasoning_ppl(self) -> float:
        return math.exp(self.reasoning_nll)

    @property
    def answer_ppl(self) -> float:
        return math.exp(self.answer_nll)

    def as_dict(self) -> dict[str, float | int]:
        return {**self.__dict__, "reasoning_ppl": self.reasoning_ppl, "answer_ppl": self.answer_ppl,
                "response_ppl": math.exp(self.response_nll)}


@torch.no_grad()
def measure_shift(model, tokenizer, examples: list[SafetyExample], *, family: str = "auto",
                  batch_size: int = 4, max_tokens: int | None = None) -> ShiftReport:
    """NLL of `examples`' reasoning and answer tokens under `model` (teacher forcing).
    `max_tokens` truncates long examples (their tail is then not counted)."""
    model.eval()
    device = next(model.parameters()).device
    sums = {chat.REASONING: 0.0, chat.ANSWER: 0.0}
    counts = {chat.REASONING: 0, chat.ANSWER: 0}
    encoded = [chat.tokenize_example(tokenizer, e.prompt, e.reasoning, e.answer, family=family) for e in examples]
    if max_tokens:
        encoded = [(ids[:max_tokens], seg[:max_tokens]) for ids, seg in encoded]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(encoded), batch_size):
        batch = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        segments = torch.full((len(batch), width), chat.PROMPT, dtype=torch.long)
        for row, (ids, seg) in enumerate(batch):  # right padding: positions stay 0..n-1
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
            segments[row, : len(seg)] = torch.tensor(seg)
        logprobs = sequence_logprobs(model, input_ids, mask, 1.0, batch_size, device)
        target_segments = segments[:, 1:] * mask[:, 1:]  # padding counts as PROMPT: never scored
        for segment in sums:
            selected = target_segments == segment
            sums[segment] -= float(logprobs[selected].double().sum())
            counts[segment] += int(selected.sum())
    r, a = counts[chat.REASONING], counts[chat.ANSWER]
    return ShiftReport(
        examples=len(examples), reasoning_tokens=r, answer_tokens=a,
        reasoning_nll=sums[chat.REASONING] / max(r, 1), answer_nll=sums[chat.ANSWER] / max(a, 1),
        response_nll=(sums[chat.REASONING] + sums[chat.ANSWER]) / max(r + a, 1),
    )


def main(argv: list[str]) -> int:
    """`rl-safety shift --model M --data D [--dataset NAME]`: prints one JSON line."""
    import json

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl_safety.data.safety import DATASETS, load_safety_dataset
    from rl_safety.errors import ArgumentParser, UsageError
    from rl_safety.preflight import check_model_path

    parser = ArgumentParser(prog="rl-safety shift", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory or hub name")
    parser.add_argument("--data", required=True, help="dataset file or hub name")
    parser.add_argument("--dataset", default="schema", choices=sorted(DATASETS),
                        help="column mapping of --data (default: our schema: prompt/reasoning/answer/label)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--family", default="auto", choices=["auto", *chat.FAMILIES])
    parser.add_argument("--limit", type=int, default=None, help="first N rows only")
    parser.add_argument("--max-tokens", type=int, default=None, help="truncate each example")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    for flag, value in (("--limit", args.limit), ("--max-tokens", args.max_tokens), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} {value}: must be at least 1")
    check_model_path(args.model, "--model")
    examples, report = load_safety_dataset(args.dataset, args.data, split=args.split, limit=args.limit)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    if torch.cuda.is_available():
        model = model.cuda()
    result = measure_shift(model, tokenizer, examples, family=args.family, batch_size=args.batch_size,
                           max_tokens=args.max_tokens)
    print(json.dumps({"model": args.model, "data": args.data, "skipped_rows": len(report.bad), **result.as_dict()}))
    return 0
