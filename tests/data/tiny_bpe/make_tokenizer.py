#!/usr/bin/env python3
"""Writes the tiny byte-level BPE tokenizer the tests use (tokenizer.json,
tokenizer_config.json, generation_config.json next to this script).

GPT-2 byte level, Qwen2/Qwen3 pre-tokeniser (the same Split regex, digits one by one),
the 256 byte tokens, NUM_MERGES merges learned by plain BPE from the math text below,
and the ChatML special tokens. Deterministic: rerunning gives byte-identical files.
Needs the `regex` module (for \\p{L}); no tokenizer library.
"""
import json
import os
from collections import Counter

import regex

NUM_MERGES = 300
HERE = os.path.dirname(os.path.abspath(__file__))

# Qwen2 / Qwen3's pre-tokeniser pattern.
PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
           r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """
What is 12 + 30? Please reason step by step, and put your final answer within \\boxed{}.
We add the tens and the ones: 12 + 30 = 42. The answer is \\boxed{42}.
Natalia sold clips to 48 of her friends in April, and then she sold half as many clips
in May. How many clips did Natalia sell altogether in April and May?
Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether. #### 72
Let x be the number of apples. Then 3x + 5 = 20, so x = 5. Therefore the answer is 5.
Compute the sum of the first ten positive integers. The sum is 10 * 11 / 2 = 55.
Find the value of \\frac{1}{2} + \\frac{1}{3}. We have \\frac{3}{6} + \\frac{2}{6} = \\frac{5}{6}.
Solve for y: 2y - 7 = 11. Adding 7 gives 2y = 18, so y = 9. The final answer is \\boxed{9}.
A rectangle has length 8 and width 6. What is its area? The area is 8 \\times 6 = 48.
How many minutes are there in 3 hours? There are 60 minutes in an hour, so 3 * 60 = 180.
If a train travels 60 miles per hour for 4 hours, how far does it travel? 240 miles.
The product of two numbers is 36 and their sum is 13. What are the numbers? 4 and 9.
What is the remainder when 100 is divided by 7? Since 7 * 14 = 98, the remainder is 2.
Simplify \\sqrt{50}. We have \\sqrt{50} = \\sqrt{25 \\cdot 2} = 5\\sqrt{2}.
Let me think step by step. First, we compute the total. Then we subtract the cost.
So the answer is \\boxed{17}. Answer: 17
<think>
Okay, let me compute this carefully. The question asks for the difference.
</think>
"""

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def train():
    b2u = bytes_to_unicode()
    words = Counter()
    for piece in regex.findall(PATTERN, CORPUS):
        words[tuple(b2u[b] for b in piece.encode("utf-8"))] += 1
    vocab = {b2u[b]: i for i, b in enumerate(sorted(b2u))}  # ids 0..255 in byte order
    merges = []
    words = dict(words)
    while len(merges) < NUM_MERGES:
        pairs = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        # Most frequent pair; ties broken by the pair text so the result is deterministic.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        vocab.setdefault(merged, len(vocab))
        new_words = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    return vocab, merges


def main():
    vocab, merges = train()
    added = [{"id": len(vocab) + i, "content": s, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, s in enumerate(SPECIAL)]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PATTERN}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "",
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }
    # Qwen3's template, shortened to the parts pmdrl's chat-format detection reads.
    template = (
        "{%- if messages[0].role == 'system' %}\n"
        "    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message.role != 'system' %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n")
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                 for t in added},
        "bos_token": None,
        "chat_template": template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 2048,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    ids = {t["content"]: t["id"] for t in added}
    generation = {"bos_token_id": ids["<|endoftext|>"],
                  "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
                  "pad_token_id": ids["<|endoftext|>"], "do_sample": True,
                  "temperature": 0.6, "top_p": 0.95}
    for name, obj in [("tokenizer.json", tokenizer), ("tokenizer_config.json", config),
                      ("generation_config.json", generation)]:
        with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1 if name != "tokenizer.json" else None)
            f.write("\n")
    print(f"{len(vocab)} vocabulary tokens ({len(merges)} merges) + {len(added)} special")


if __name__ == "__main__":
    main()
