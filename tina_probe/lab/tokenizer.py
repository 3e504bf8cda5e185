"""The lab tokenizer: one token per character (so one per digit), format tags as ordinary tokens, a chat template.

Built with `tokenizers` as a byte-level BPE with no merges (one token per character), laid out exactly as
transformers' Qwen2Tokenizer builds itself: `AutoTokenizer` on a Qwen2 model folder always returns that class
and rebuilds the pipeline from the vocabulary alone, so any other layout (a WordLevel model, a plain split)
would be silently replaced when TRL, lm-eval or vLLM load the model (spaces were dropped that way).
`<think>`, `</think>`, `<answer>`, `</answer>` and `\\boxed` are *non-special* added tokens: TRL decodes
completions with skip_special_tokens=True, and special tags would vanish from what the reward sees.
"""
from __future__ import annotations

import string

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
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


# Qwen2's pre-tokenization split (transformers' Qwen2Tokenizer uses this exact pattern).
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def _byte_level(ch: str) -> str:
    """The byte-level alphabet's symbol for one ASCII character (space -> 'Ġ', newline -> 'Ċ')."""
    table = {chr(b): sym for b, sym in zip(range(256), _BYTE_SYMBOLS)}
    return table[ch]


def _byte_symbols() -> list[str]:
    """GPT-2's reversible byte -> unicode map (printable bytes map to themselves, the rest above 255); written
    out because `tokenizers` applies it inside ByteLevel but does not expose the table."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


_BYTE_SYMBOLS = _byte_symbols()


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the lab tokenizer from scratch (deterministic: the vocabulary is a fixed list)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in CHARS:
        vocab.setdefault(_byte_level(ch), len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], dropout=None, unk_token=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
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
