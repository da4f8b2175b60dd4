"""tools/serve_local.py in a real subprocess, spoken to over real HTTP in SGLang's JSON shapes."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
import pytest

from dagger_jax.tokenizer import train_bpe_tokenizer
from tests.policies.test_local_sampler import CORPUS, export_tiny_model
from tests.serving.servers import serve_local

LATENCY_MS = 50
PROMPT = [5, 17, 250, 9]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("standin")
    tok = train_bpe_tokenizer(CORPUS, 300, root / "tok")
    dirs = {"a": export_tiny_model(root / "a", 0, tok), "b": export_tiny_model(root / "b", 1, tok)}
    with serve_local(dirs["a"], root / "server.log", "--max-batch", "4",
                     "--latency-ms", str(LATENCY_MS)) as url:
        yield url, dirs


def call(url: str, method: str, path: str, body=None, raw: bytes | None = None):
    """One HTTP request; returns (status, parsed JSON or text)."""
    async def go():
        async with aiohttp.ClientSession() as session:
            kwargs = {"data": raw, "headers": {"Content-Type": "application/json"}} \
                if raw is not None else ({"json": body} if body is not None else {})
            async with session.request(method, url + path, **kwargs) as response:
                text = await response.text()
                try:
                    return response.status, json.loads(text)
                except json.JSONDecodeError:
                    return response.status, text
    return asyncio.run(go())


def generate(url, input_ids, **fields):
    sampling = {"temperature": 0.0, "max_new_tokens": 6, **fields.pop("sampling_params", {})}
    return call(url, "POST", "/generate", {"input_ids": input_ids, "sampling_params": sampling, **fields})


def test_health_model_info_and_flush(server):
    url, dirs = server
    assert call(url, "GET", "/health")[0] == 200
    assert call(url, "GET", "/health_generate")[0] == 200
    assert call(url, "GET", "/get_model_info") == (200, {
        "model_path": str(dirs["a"]), "tokenizer_path": str(dirs["a"]), "is_generation": True,
        "preferred_sampling_params": None, "weight_version": "default"})
    assert call(url, "GET", "/get_weight_version") == (200, {"weight_version": "default"})
    status, text = call(url, "POST", "/flush_cache")
    assert status == 200 and text.startswith("Cache flushed.")


def test_generate_answers_in_sglang_shape(server):
    url, _ = server
    status, out = generate(url, PROMPT, return_logprob=True, rid="req-1")
    assert status == 200, out
    assert set(out) == {"text", "output_ids", "meta_info"}
    meta = out["meta_info"]
    assert meta["id"] == "req-1" and meta["finish_reason"] == {"type": "length", "length": 6}
    assert (meta["prompt_tokens"], meta["completion_tokens"]) == (4, 6)
    assert meta["weight_version"] == "default" and meta["input_token_logprobs"] == []
    assert meta["e2e_latency"] >= LATENCY_MS / 1000  # the injected delay is really there
    triples = meta["output_token_logprobs"]
    assert [t[1] for t in triples] == out["output_ids"] and all(t[2] is None for t in triples)
    assert all(isinstance(t[0], float) and t[0] < 0 for t in triples)
    assert isinstance(out["text"], str)
    status, plain = generate(url, PROMPT)  # no logprobs asked: none given
    assert plain["output_ids"] == out["output_ids"] and "output_token_logprobs" not in plain["meta_info"]


def test_batch_input_gives_a_list_equal_to_single_requests(server):
    url, _ = server
    prompts = [PROMPT, [100], [7, 8, 9, 10, 11, 12]]
    status, outs = generate(url, prompts, rid="batch", return_logprob=[True, False, True])
    assert status == 200 and isinstance(outs, list) and len(outs) == 3
    assert [o["meta_info"]["id"] for o in outs] == ["batch_0", "batch_1", "batch_2"]
    assert "output_token_logprobs" not in outs[1]["meta_info"]
    for prompt, o in zip(prompts, outs):
        assert o["output_ids"] == generate(url, prompt)[1]["output_ids"]


def test_scoring_through_logprob_start_len(server):
    url, _ = server
    _, gen = generate(url, PROMPT, return_logprob=True)
    generated = gen["output_ids"]
    status, scored = generate(url, PROMPT + generated, return_logprob=True,
                              logprob_start_len=len(PROMPT) - 1,
                              sampling_params={"max_new_tokens": 0})
    assert status == 200, scored
    assert scored["output_ids"] == []
    assert scored["meta_info"]["finish_reason"] == {"type": "length", "length": 0}
    inputs = scored["meta_info"]["input_token_logprobs"]
    # SGLang: entries for positions logprob_start_len.., the first always null.
    assert [t[1] for t in inputs] == (PROMPT + generated)[len(PROMPT) - 1:] and inputs[0][0] is None
    np.testing.assert_allclose([t[0] for t in inputs[1:]],
                               [t[0] for t in gen["meta_info"]["output_token_logprobs"]], atol=1e-5)
    _, whole = generate(url, PROMPT, return_logprob=True, logprob_start_len=0,
                        sampling_params={"max_new_tokens": 0})
    assert [t[1] for t in whole["meta_info"]["input_token_logprobs"]] == PROMPT
    assert whole["meta_info"]["input_token_logprobs"][0][0] is None


def test_stops_report_what_matched(server):
    url, _ = server
    _, base = generate(url, PROMPT, sampling_params={"max_new_tokens": 8})
    stop = base["output_ids"][2]
    _, out = generate(url, PROMPT, sampling_params={"max_new_tokens": 8, "stop_token_ids": [stop]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["output_ids"] == base["output_ids"][:base["output_ids"].index(stop) + 1]
    # A stop string: the text is cut before it, the ids keep the token that completed it.
    text = base["text"]
    char = next(c for c in text[1:] if c not in text[:1])
    _, out = generate(url, PROMPT, sampling_params={"max_new_tokens": 8, "stop": char})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": char}
    assert out["text"] == text[:text.find(char)] and len(out["output_ids"]) <= 8


@pytest.mark.parametrize("raw, needle", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (json.dumps({"input_ids": [1, 2], "sampling_params": {"top_k": 5}}).encode(), "top_k"),
    (json.dumps({"input_ids": [1, 300]}).encode(), "input_ids[1] = 300 is outside the vocabulary"),
    (json.dumps({"input_ids": [[1], [2, -4]]}).encode(), "input_ids[1][1] = -4"),
    (json.dumps({"input_ids": [1], "top_logprobs_num": 3}).encode(), "top_logprobs_num"),
    (json.dumps({"input_ids": [1, 2], "logprob_start_len": 2, "return_logprob": True}).encode(),
     "logprob_start_len"),
    (json.dumps({"text": "hello"}).encode(), "send input_ids"),
    (json.dumps({"input_ids": [1], "sampling_params": {"max_new_tokens": 500}}).encode(),
     "context length"),
])
def test_bad_requests_get_400_naming_the_field(server, raw, needle):
    url, _ = server
    status, body = call(url, "POST", "/generate", raw=raw)
    assert status == 400 and needle in body["error"]["message"], body


def test_update_weights_from_disk(server, tmp_path):
    url, dirs = server
    _, before = generate(url, PROMPT)
    status, bad = call(url, "POST", "/update_weights_from_disk", {"model_path": str(tmp_path / "nope")})
    assert status == 400 and bad["success"] is False and str(tmp_path / "nope") in bad["message"]
    assert generate(url, PROMPT)[1]["output_ids"] == before["output_ids"]
    status, ok = call(url, "POST", "/update_weights_from_disk",
                      {"model_path": str(dirs["b"]), "weight_version": "v7"})
    assert status == 200 and ok["success"] is True and "v7" in ok["message"], ok
    _, after = generate(url, PROMPT)
    assert after["output_ids"] != before["output_ids"] and after["meta_info"]["weight_version"] == "v7"
    info = call(url, "GET", "/get_model_info")[1]
    assert (info["model_path"], info["weight_version"]) == (str(dirs["b"]), "v7")
    status, missing = call(url, "POST", "/update_weights_from_disk", {"weight_version": "v8"})
    assert status == 400 and "model_path" in missing["message"]
    call(url, "POST", "/update_weights_from_disk",
         {"model_path": str(dirs["a"]), "weight_version": "default"})
