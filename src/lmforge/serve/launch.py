"""``serve_folder``: the server over a model folder, as ``lmforge serve`` starts it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lmforge import infer, rag
from lmforge.config import AgentConfig, AssistantConfig, ServeConfig
from lmforge.serve.keys import ApiKeys


def serve_folder(model_dir: Path, assistant: AssistantConfig, config: ServeConfig,
                 keys: ApiKeys, rag_index: Path | None = None, adapter: Path | None = None,
                 quantize: str = "none", agent: AgentConfig | None = None) -> None:
    """Load the model of ``model_dir`` (with its LoRA ``adapter``, ``quantize``-d), open the
    RAG index ``rag_index`` if given, and serve until interrupted. RAG answers decode with the
    folder's grounding settings, as eval and ``rag ask`` over that folder do. The API reports
    the model as ``config.model_name``, else the folder's name; ``agent`` enables the agent
    chat option. Ratings of its answers go where ``config.feedback_file`` says ("auto":
    ``feedback_store``)."""
    import lmforge.serve as package  # looked up now: a test may replace ``run_server``

    # the index first: a bad one fails before the (slow) model load
    grounding = rag.Grounding.open(Path(rag_index)) if rag_index is not None else None
    settings = infer.read_grounding(Path(model_dir))  # a bad file, too, fails before the load
    # a bad ``quantize`` is refused there, before the model is read
    model, chat = infer.load_for_inference(Path(model_dir), adapter=adapter, quantize=quantize)
    if config.feedback_file == "auto":
        config = dataclasses.replace(config, feedback_file=str(feedback_store(model_dir)))
    package.run_server(model, chat, assistant, config, keys, grounding,
                       config.model_name or Path(model_dir).name, settings, agent)


def feedback_store(model_dir: Path) -> Path:
    """Where ``serve.feedback_file = "auto"`` keeps the users' ratings of ``model_dir``'s
    answers: a run's model folder is ``<run>/<stage>/model``, and a stage may replace its
    folder whole, so the store is the run's, ``<run>/feedback.jsonl``, outliving every
    stage; any other model folder keeps it beside itself."""
    model_dir = Path(model_dir)
    home = model_dir.parent.parent if model_dir.name == "model" else model_dir.parent
    return home / "feedback.jsonl"
