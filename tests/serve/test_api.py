"""The server as a client sees it: the official `openai` client, and raw HTTP for what it would not send."""
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.conftest import ANSWERS


def post(url, body: bytes | dict):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def ask(client, model, question="what is the capital", **options):
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                           max_tokens=options.pop("max_tokens", 6), temperature=0, **options)
    return reply.choices[0].message.content


def test_models_lists_the_base_and_both_adapters(client):
    assert [m.id for m in client.models.list().data] == ["tiny", *ANSWERS]


def test_a_chat_completion_with_usage(client):
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=5, temperature=0)
    assert reply.object == "chat.completion" and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= 5 and reply.usage.prompt_tokens > 0


@pytest.mark.parametrize("model", ["tiny", "paris"])
def test_streamed_chunks_join_to_the_whole_reply_at_temperature_0(client, model):
    whole = client.completions.create(model=model, prompt="The quick brown", max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model=model, prompt="The quick brown", max_tokens=12, temperature=0,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    chat = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello"}],
                                               max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chat) == ask(client, model, "hello", max_tokens=8)


def test_each_adapter_answers_as_trained_and_the_base_does_not(client):
    for name, answer in ANSWERS.items():
        assert ask(client, name).startswith(answer)
    assert not any(ask(client, "tiny").startswith(a) for a in ANSWERS.values())


def test_16_concurrent_requests_alternating_adapters_get_their_own_answers(client, server):
    names = [list(ANSWERS)[i % 2] for i in range(16)]
    questions = ["what is the capital", "hello world", "tell me a date", "July"] * 4
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda nq: ask(client, nq[0], nq[1]), zip(names, questions)))
    assert all(reply.startswith(ANSWERS[name]) for name, reply in zip(names, replies)), replies


def test_sampling_options_are_honoured(client):
    stopped = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=12, temperature=0)
    text = stopped.choices[0].text
    assert len(text) > 2
    cut = client.completions.create(model="tiny", prompt="The quick brown", max_tokens=12, temperature=0,
                                    stop=[text[2:4]])
    assert cut.choices[0].text == text[: text.index(text[2:4])] and cut.choices[0].finish_reason == "stop"
    seeded = [client.completions.create(model="tiny", prompt="The", max_tokens=12, temperature=1.5, top_p=0.95,
                                        seed=3).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert client.completions.create(model="tiny", prompt="The", max_tokens=3).usage.completion_tokens <= 3


@pytest.mark.parametrize("body, status, says", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "does not exist"),
    (b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
    ({"model": "tiny", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}, 400, "at least 1"),
    ({"model": "tiny", "max_tokens": 100000, "messages": [{"role": "user", "content": "hi"}]}, 400, "exceed"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "unknown role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "fox " * 600}]}, 400, "the context is 512"),
    ({"model": "tiny", "messages": []}, 400, "messages"),
    ({"model": "tiny", "temperature": 9, "messages": [{"role": "user", "content": "hi"}]}, 400, "temperature"),
])
def test_a_bad_request_gets_an_openai_error_and_the_server_keeps_serving(server, client, body, status, says):
    code, reply = post(f"{server[0]}/v1/chat/completions", body)
    assert code == status
    assert set(reply["error"]) == {"message", "type", "param", "code"} and says in reply["error"]["message"]
    assert ask(client, "paris").startswith("Paris")


def test_a_client_that_leaves_mid_stream_frees_its_row(server, client):
    url, batcher = server
    before = batcher.dropped
    stream = client.completions.create(model="tiny", prompt="The", max_tokens=480, temperature=0, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 20
    while batcher.dropped == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert batcher.dropped == before + 1 and get(f"{url}/health")["running"] == 0
    assert ask(client, "march").startswith("March")
