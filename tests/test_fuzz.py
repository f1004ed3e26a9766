"""OpenAPI-driven fuzzing (schemathesis): whatever the generated requests, the server answers
with a response, never a 5xx."""

import pytest
import torch
from conftest import FIXTURE_TOKENIZER
from hypothesis import HealthCheck, settings

from lmforge.config import AssistantConfig, ModelConfig, SamplingConfig, ServeConfig
from lmforge.model import Transformer
from lmforge.serve import create_app
from lmforge.tokenizer import load_chat_format

schemathesis = pytest.importorskip("schemathesis")


def tiny_app():  # noqa: ANN201
    chat = load_chat_format(FIXTURE_TOKENIZER)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=chat.tokenizer.get_vocab_size(), dim=16, n_layers=1,
                                    n_heads=2, n_kv_heads=1, max_seq_len=128)).eval()
    return create_app(model, chat, AssistantConfig(sampling=SamplingConfig(max_new_tokens=8)),
                      ServeConfig(model_name="fuzz"))


schema = schemathesis.openapi.from_asgi("/openapi.json", tiny_app())


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case) -> None:  # noqa: ANN001
    response = case.call()
    assert response.status_code < 500, (case.as_curl_command(), response.text[:500])
