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
# folder keeps its own). Every turn ends with <|im_end|>, which also ends generation.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

_CJK = r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"
# The GPT-2/Llama-3 style split with two changes for mixed Chinese/English text: runs of CJK
# characters form their own pieces (never glued to Latin letters as plain \p{L}+ would), and
# every digit is its own piece (numbers, dates and amounts tokenise consistently).
CJK_PRETOKENIZE_PATTERN = (
    rf"[{_CJK}]+"
    r"|(?i:'s|'t|'re|'ve|'m|'ll|'d)"
    rf"|[^\r\n\p{{L}}\p{{N}}]?(?:(?![{_CJK}])\p{{L}})+"
    r"|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

