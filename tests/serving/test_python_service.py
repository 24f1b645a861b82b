"""examples/python_service over real HTTP on loopback: uvicorn serves the app in a thread,
httpx sends the requests. Answers must equal the Python runtime's generation for the same
request, also when requests run concurrently; invalid requests get 422 with one message."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn

from uniattn_export.model.tokenizer import load_tokenizer
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.session import Sampling

APP = Path(__file__).resolve().parents[2] / "examples" / "python_service" / "app.py"
WORKERS = 2
EOS = PAD = 0  # the byte tokenizer's end-of-text / padding byte


def _load_app_module():
    spec = importlib.util.spec_from_file_location("python_service_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # importlib's recipe: pydantic resolves the annotations there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def service(tiny_artifact):
    """Base URL of the service on 127.0.0.1 (a free port), stopped after the module."""
    app = _load_app_module().create_app(tiny_artifact, workers=WORKERS)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def reference(tiny_artifact):
    """What the service should answer, computed with the runtime directly."""
    session = OrtSession(tiny_artifact)

    def expected(ids, max_new_tokens=16, sampling=None):
        run = session.generate([ids], max_new_tokens, sampling=sampling, eos_token_id=EOS, pad_token_id=PAD)
        return run.sequences(EOS)[0]

    return expected


def _post(url, body):
    return httpx.post(f"{url}/generate", json=body, timeout=60)


def test_health(service, tiny_artifact):
    answer = httpx.get(f"{service}/health", timeout=10)
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["workers"] == WORKERS and body["artifact"] == str(tiny_artifact)
    assert body["runtime"].startswith("onnxruntime 1.31") and "CPUExecutionProvider" in body["runtime"]


def test_prompt_ids_greedy(service, reference):
    answer = _post(service, {"prompt_ids": [5, 17, 99, 3], "max_new_tokens": 9})
    assert answer.status_code == 200
    body = answer.json()
    assert body["tokens"] == reference([5, 17, 99, 3], 9)
    assert body["prompt_tokens"] == 4
    assert body["finish_reason"] == ("eos" if body["tokens"][-1] == EOS else "length")


def test_text_prompt_is_tokenized_and_decoded(service, reference, tiny_checkpoint):
    tokenizer = load_tokenizer(tiny_checkpoint)
    answer = _post(service, {"prompt": "Hello, UniAttn", "max_new_tokens": 6, "temperature": 0.7, "seed": 4})
    assert answer.status_code == 200
    ids = tokenizer("Hello, UniAttn")["input_ids"]
    assert ids == list("Hello, UniAttn".encode())  # one token per byte
    body = answer.json()
    assert body["tokens"] == reference(ids, 6, Sampling(temperature=0.7, seed=4))
    assert body["text"] == tokenizer.decode(body["tokens"], skip_special_tokens=True)
    assert body["prompt_tokens"] == len(ids)


def test_concurrent_requests_equal_single_requests(service, reference):
    bodies = []
    for i in range(8):
        body = {"prompt_ids": [(7 * i + j) % 256 for j in range(3 + i)], "max_new_tokens": 12}
        if i % 2:
            body |= {"temperature": 0.9, "top_k": 30, "top_p": 0.95, "seed": i}
        bodies.append(body)
    single = [_post(service, body).json()["tokens"] for body in bodies]
    for body, tokens in zip(bodies, single):
        sampling = Sampling(0.9, 30, 0.95, body["seed"]) if "seed" in body else None
        assert tokens == reference(body["prompt_ids"], 12, sampling)
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Three copies of every request in flight at once, more than the service's sessions.
        answers = list(pool.map(lambda body: _post(service, body), bodies * 3))
    assert all(a.status_code == 200 for a in answers)
    assert [a.json()["tokens"] for a in answers] == single * 3


@pytest.mark.parametrize(
    "body, detail",
    [
        ({}, "give exactly one of prompt (text) and prompt_ids (token ids)"),
        ({"prompt": "a", "prompt_ids": [1]}, "give exactly one of prompt (text) and prompt_ids (token ids)"),
        ({"prompt_ids": []}, "prompt_ids: List should have at least 1 item after validation, not 0"),
        ({"prompt_ids": [1, 256]}, "prompt_ids: token id 256 is outside the vocabulary [0, 256)"),
        ({"prompt_ids": [1, "x"]}, "prompt_ids.1: Input should be a valid integer"),
        ({"prompt_ids": [1], "max_new_tokens": 0}, "max_new_tokens: Input should be greater than or equal to 1"),
        ({"prompt_ids": [1], "max_new_tokens": 5000}, "max_new_tokens: Input should be less than or equal to 1024"),
        ({"prompt_ids": [1], "temperature": 0}, "temperature: Input should be greater than 0"),
        ({"prompt_ids": [1], "temperature": 1, "top_p": 1.5}, "top_p: Input should be less than or equal to 1"),
        ({"prompt_ids": [1], "top_k": 5}, "top_k and top_p apply to sampling: add temperature"),
        ({"prompt_ids": [1], "seed": -1}, "seed: Input should be greater than or equal to 0"),
        ({"prompt_ids": [1], "beams": 4}, "beams: Extra inputs are not permitted"),
    ],
)
def test_invalid_requests_get_422_with_one_message(service, body, detail):
    answer = _post(service, body)
    assert answer.status_code == 422
    assert answer.json() == {"detail": detail}


def test_body_that_is_not_json(service):
    answer = httpx.post(f"{service}/generate", content=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": "the body is not valid JSON (Expecting property name enclosed in double quotes at character 1)"
    }
