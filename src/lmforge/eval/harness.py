"""Cross-check of our multiple-choice scoring through lm-evaluation-harness (the ``lmeval``
extra): the same questions and prompts, written as a harness task, scored by the harness's own
Hugging Face backend on the exported model. Agreement means the exported weights, the
``tokenizer.json`` as transformers reads it, and our log-likelihood scoring all match the
field's reference implementation; a difference points at one of the three.

The task file is generated (the prompt text is ours, so both sides score identical strings);
everything else -- tokenisation of context + continuation, the forward pass, ``acc``,
``acc_norm`` (per character) and ``acc_bytes`` -- is the harness's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lmforge.atomic import atomic_write_jsonl
from lmforge.eval.mcq import Question, prompt

TASK = "lmforge_mcq"


def write_task(folder: Path, questions: list[Question], shots: list[Question]) -> None:
    records = [{"prompt": prompt(q, shots), "choices": q.choices, "answer": q.answer}
               for q in questions]
    data = atomic_write_jsonl(folder / "questions.jsonl", records)
    metrics = "\n".join(f"  - metric: {m}\n    aggregation: mean\n    higher_is_better: true"
                        for m in ("acc", "acc_norm", "acc_bytes"))
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {json.dumps(str(data))}\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: prompt\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        f'target_delimiter: ""\nmetric_list:\n{metrics}\n', encoding="utf-8")


def harness_mcq(hf_dir: Path, questions: list[Question], shots: list[Question] | None = None,
                device: str = "cpu") -> dict[str, Any]:
    """``acc``, ``acc_norm`` and ``acc_bytes`` of the Hugging Face folder ``hf_dir`` on
    ``questions``, as lm-evaluation-harness computes them, with every choice's log-likelihood."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ValueError("the lm_eval cross-check needs the optional extra: "
                         "pip install -e '.[lmeval]'") from err
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # the task's data is a local file
    with tempfile.TemporaryDirectory() as tmp:
        write_task(Path(tmp), questions, shots or [])
        out = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={hf_dir},dtype=float32", tasks=[TASK],
            task_manager=TaskManager(include_path=tmp), device=device, batch_size=1,
            num_fewshot=0, log_samples=True)
    scores = out["results"][TASK]
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return {m: float(scores[f"{m},none"]) for m in ("acc", "acc_norm", "acc_bytes")} | {
        "questions": len(questions), "shots": len(shots or []),
        "choice_logprobs": [[float(r[0]) for r in s["filtered_resps"]] for s in samples]}
