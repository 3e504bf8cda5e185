"""The lab tokenizer: one token per character (so one per digit), format tags as ordinary tokens, a chat template.

Built with `tokenizers` (WordLevel over single characters plus added tag tokens) and wrapped as a
transformers fast tokenizer so that TRL, PEFT, lm-eval and vLLM use it like any hub tokenizer.
`<think>`, `</think>`, `<answer>`, `</answer>` and `\\boxed` are *non-special* added tokens: TRL decodes
completions with skip_special_tokens=True, and special tags would vanish from what the reward sees.
"""
from __future__ import annotations

import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
UNK = "<unk>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
SPECIAL = (EOS, UNK, USER, ASSISTANT, SYSTEM)
TAGS = ("<think>", "</think>", "<answer>", "</answer>", "\\boxed")
CHARS = string.digits + string.ascii_letters + " \n.,:;?!+-*/=()[]{}$^_'\"\\<>|#%&~`@"

# Rendering is kept identical to `render_chat` below (pretraining pre-tokenizes without jinja for speed).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}" + SYSTEM + "{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}\n"
    "{% elif m['role'] == 'assistant' %}" + ASSISTANT + "{{ m['content'] }}" + EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)


def render_chat(question: str, completion: str | None = None, system: str | None = None) -> str:
    """The chat template's output for one user turn (and optionally the assistant's answer), without jinja."""
    text = f"{SYSTEM}{system}\n" if system else ""
    text += f"{USER}{question}\n{ASSISTANT}"
    if completion is not None:
        text += completion + EOS
    return text


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the lab tokenizer from scratch (deterministic: the vocabulary is a fixed list)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in CHARS:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast
