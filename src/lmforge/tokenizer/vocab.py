"""The fixed parts of every lmforge tokenizer: special tokens, the chat template, the
pre-tokenizer pattern. Kept apart from training so inference, SFT and export read one source.
"""

from __future__ import annotations

BOS = "<|bos|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [EOS, BOS, PAD, IM_START, IM_END]
CHAT_ROLES = ("system", "user", "assistant")

# ChatML, the template of every tokenizer lmforge trains (a model imported from a Hugging Face
# folder keeps its own). Every turn ends with <|im_end|>, which also ends generation. Tools
# follow Qwen's (Hermes') layout, which llama.cpp, vLLM and Ollama already parse, as plain text
# (no new tokens): the tools as JSON lines in the system turn, each call a line of JSON between
# <tool_call> tags after the assistant's text, each result a turn of its own role, "tool".
# Without tools and tool calls it renders exactly the ChatML it always did.
CHAT_TEMPLATE = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{- messages[0]['content'] + '\\n\\n' -}}"
    "{%- endif -%}"
    "{{- '# Tools\\n\\nYou may call one or more of these functions, whose signatures are within "
    "<tools></tools>:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each call, answer with a JSON object of the function name and "
    "arguments within <tool_call></tool_call> tags:\\n<tool_call>\\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call>"
    "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not (tools and loop.first and message['role'] == 'system') -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') -}}"
    "{%- for tool_call in message.tool_calls or [] -%}"
    "{%- set call = tool_call.function if tool_call.function is defined else tool_call -%}"
    "{{- '\\n' if message['content'] or not loop.first else '' -}}"
    "{{- '<tool_call>\\n{\"name\": ' + (call.name | tojson) + ', \"arguments\": ' -}}"
    "{{- call.arguments if call.arguments is string else call.arguments | tojson -}}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# The pre-tokenizer of every tokenizer lmforge trains: llama.cpp's "deepseek-coder" split, a
# sequence of regexes applied one after the other, each isolating its matches inside the
# pieces the one before left. llama.cpp runs no regex from tokenizer.json; it implements a
# fixed list of pre-tokenizers in C++ and a GGUF names one (``tokenizer.ggml.pre``), so a
# tokenizer must use one of those to tokenise the same in llama.cpp and Ollama as here. Of the
# implemented ones this keeps what lmforge's own pattern was for in mixed Chinese/English
# text: runs of CJK characters are pieces of their own (never glued to Latin letters) and every
# digit is its own piece (amounts and dates tokenise consistently). It is also one of the
# oldest, so every llama.cpp build in use has it. On the demo's held-out text it gives 2.03
# characters per token against 2.09 for the previous pattern (2.07 vs 2.08 on insurance text;
# figures in docs/experiments.md).
PRETOKENIZE_SPLITS = (
    "[\r\n]",
    "\\s?\\p{L}+",
    "\\s?\\p{P}+",
    "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
    "\\p{N}",
)
LLAMA_CPP_PRE = "deepseek-coder"  # the name of PRETOKENIZE_SPLITS in llama.cpp

