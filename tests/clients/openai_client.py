"""Drives a running mlx-serve with the official `openai` Python package, as users do.

Run by tests/http_limits.rs against an in-process server whose KV pool holds one long
prompt but not two and whose queue is off (so the second long prompt gets a 429):

    python3 tests/clients/openai_client.py BASE_URL API_KEY MODEL

Prints one line per check; exits non-zero (with a traceback) at the first failure.
"""

import sys

import openai

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=120)


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    print(f"ok   {name}")


models = client.models.list()
check("models.list names the model", [m.id for m in models.data] == [model], models)
check("models.retrieve", client.models.retrieve(model).id == model)

question = [{"role": "user", "content": "What is the capital of France?"}]
chat = client.chat.completions.create(model=model, messages=question, max_tokens=10, temperature=0)
answer = chat.choices[0].message.content
check("chat completion", bool(answer) and chat.choices[0].finish_reason in ("stop", "length"), chat)
check("chat usage", chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens)
check("cached tokens reported", chat.usage.prompt_tokens_details.cached_tokens is not None)

stream = client.chat.completions.create(
    model=model, messages=question, max_tokens=10, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
pieces, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
        finish = choice.finish_reason or finish
check("streamed chat equals the plain one", "".join(pieces) == answer, (pieces, answer))
check("stream finish reason", finish == chat.choices[0].finish_reason, finish)
check("stream usage chunk", usage is not None and usage.completion_tokens == chat.usage.completion_tokens)

completion = client.completions.create(model=model, prompt="1, 2, 3, 4,", max_tokens=6, temperature=0)
check("completion", bool(completion.choices[0].text), completion)

try:
    client.chat.completions.create(model="no-such-model", messages=question, max_tokens=1)
    check("unknown model raises NotFoundError", False)
except openai.NotFoundError as e:
    check("unknown model raises NotFoundError", e.code == "model_not_found", e)

try:
    client.chat.completions.create(model=model, messages=question, n=2)
    check("n=2 raises BadRequestError", False)
except openai.BadRequestError as e:
    check("n=2 raises BadRequestError", e.param == "n", e)

try:
    openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
    check("a wrong key raises AuthenticationError", False)
except openai.AuthenticationError as e:
    check("a wrong key raises AuthenticationError", e.status_code == 401, e)

# The pool holds one of these prompts but not two, and nothing may queue: while the first
# streams (holding its blocks), the second must be refused with 429 and Retry-After.
long_a = "Alpha " + " ".join(f"a{i}" for i in range(150))
long_b = "Beta " + " ".join(f"b{i}" for i in range(150))
holder = client.completions.create(
    model=model, prompt=long_a, max_tokens=300, temperature=0, stream=True,
    extra_body={"ignore_eos": True},
)
first = next(iter(holder))
check("the first long prompt streams", first.choices[0].text is not None)
try:
    client.completions.create(model=model, prompt=long_b, max_tokens=4)
    check("a second long prompt raises RateLimitError", False)
except openai.RateLimitError as e:
    retry_after = e.response.headers.get("retry-after")
    check("a second long prompt raises RateLimitError", e.code == "kv_cache_exhausted", e)
    check("429 carries Retry-After", retry_after is not None and int(retry_after) >= 1, retry_after)
finally:
    holder.close()

print("all checks passed")
