"""The reference rendering for alp's chat-template parity test: reads
{"dir": <tokenizer dir>, "conversations": [{"messages", "tools", "add_generation_prompt"}]}
on stdin and writes [{"text", "ids"}] (Hugging Face transformers' apply_chat_template)."""
import json
import sys
import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
from transformers import AutoTokenizer  # noqa: E402

req = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(req["dir"])
out = []
for c in req["conversations"]:
    kw = dict(tools=c.get("tools"), add_generation_prompt=c["add_generation_prompt"])
    text = tok.apply_chat_template(c["messages"], tokenize=False, **kw)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out.append({"text": text, "ids": ids})
json.dump(out, sys.stdout, ensure_ascii=False)
