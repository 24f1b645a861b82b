"""A minimal HTTP service around the Python runtime (uniattn_export.targets.ort.OrtSession).

    python examples/python_service/app.py ARTIFACT [--host 127.0.0.1] [--port 8000]
        [--workers 1] [--max-queue 16] [--max-body-bytes 65536] [--device cpu|cuda]

POST /generate   {"prompt": "text"} or {"prompt_ids": [ids]}, plus optional "max_new_tokens"
                 (16, at most 1024), "temperature" (sampling when given), "top_k", "top_p",
                 "seed" (0). Answers {"tokens", "text", "finish_reason": "eos"|"length",
                 "prompt_tokens"}; "text" is null when the artifact has no tokenizer.
                 Invalid requests get 422 {"detail": "<field>: <problem>"}; the prompt
                 plus max_new_tokens must fit the model's positions (config.json's
                 max_position_embeddings). A body over --max-body-bytes gets 413 before it
                 is read; more than workers + --max-queue requests at once get 503 (with
                 Retry-After); an unexpected error gets 500. Every error body is JSON.
GET  /health     {"status": "ok", "runtime", "artifact", "workers", "max_queue", "max_positions"}

Concurrency: `--workers` independent sessions (each its own ONNX Runtime session and KV
cache) wait in a queue; a request takes one, generates and puts it back, so a request never
shares a cache with another and its answer is exactly what it would get alone. Requests are
not batched together: batching would change the padding each row sees and which random
draw each row gets, so answers would depend on the traffic. FastAPI runs the endpoint in
its thread pool; requests beyond `--workers` wait for a free session, at most `--max-queue`
of them: the waiting requests (and the thread-pool threads they hold) stay bounded, and so
does the memory, which the body limit bounds per request. Each session generates on a thread
of its own: with `--device cuda` a static-cache artifact decodes through CUDA graphs
(OrtSession's default; /health's "runtime" says whether they are on), and onnxruntime keeps
captured graphs per thread, so a session passed between thread-pool threads would capture
them again on each.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from uniattn_export.errors import UniAttnError
from uniattn_export.export import load_artifact
from uniattn_export.model.tokenizer import load_tokenizer
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.session import Sampling, check_prompts

MAX_NEW_TOKENS = 1024
MAX_BODY_BYTES = 64 * 1024  # a prompt of the longest context as JSON ids or text fits easily
MAX_QUEUE = 16


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, description="prompt text (needs a tokenizer in the artifact)")
    # Strict: true/false or 1.0 are not token ids (lax parsing would read them as 1 / 0 / 1).
    prompt_ids: list[StrictInt] | None = Field(None, min_length=1, description="prompt token ids")
    max_new_tokens: StrictInt = Field(16, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="sample at this temperature (default: greedy)"
    )
    top_k: StrictInt | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    seed: StrictInt = Field(0, ge=0, lt=2**64)

    @model_validator(mode="after")
    def _one_prompt_and_coherent_sampling(self):
        if (self.prompt is None) == (self.prompt_ids is None):
            raise ValueError("give exactly one of prompt (text) and prompt_ids (token ids)")
        if self.temperature is None and (self.top_k is not None or self.top_p is not None):
            raise ValueError("top_k and top_p apply to sampling: add temperature")
        return self

    def sampling(self) -> Sampling | None:
        if self.temperature is None:
            return None
        return Sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


class GenerateResponse(BaseModel):
    tokens: list[int]
    text: str | None
    finish_reason: str
    prompt_tokens: int


def _one_line(exc: RequestValidationError) -> str:
    problems = []
    for error in exc.errors():
        if error["type"] == "json_invalid":
            problems.append(f"the body is not valid JSON ({error['ctx']['error']} at character {error['loc'][-1]})")
            continue
        where = ".".join(str(part) for part in error["loc"] if part != "body")
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def _special_tokens(artifact, tokenizer) -> tuple[int | None, int]:
    """(eos, pad) token ids: the tokenizer's, else config.json's (pad falls back to eos, then 0)."""
    if tokenizer is not None:
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    else:
        config = json.loads((artifact.path / "config.json").read_text())
        eos, pad = config.get("eos_token_id"), config.get("pad_token_id")
        eos = eos[0] if isinstance(eos, list) else eos
    pad = pad if pad is not None else eos if eos is not None else 0
    return eos, pad


def _json_error(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail}, headers=headers)


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 and is never held in
    memory (a declared Content-Length is refused unread; a chunked body once it exceeds the
    limit). Bodies within the limit are read here and replayed to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_large = _json_error(413, f"the body exceeds {self.limit} bytes; send a shorter prompt")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await too_large(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await too_large(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


@dataclass
class _Worker:
    session: OrtSession
    thread: ThreadPoolExecutor  # one thread: the session's CUDA graphs belong to it


def create_app(
    artifact_dir: str | Path, *, workers: int = 1, device: str = "cpu",
    max_queue: int = MAX_QUEUE, max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:  # fmt: skip
    """The service over one artifact, with `workers` independent sessions; at most
    `max_queue` further requests wait for one, the rest get 503."""
    if workers < 1:
        raise UniAttnError(f"workers must be >= 1, got {workers}", "pass --workers 1 or more")
    if max_queue < 0 or max_body_bytes < 1:
        raise UniAttnError("max_queue must be >= 0 and max_body_bytes >= 1", "pass sensible limits")
    artifact = load_artifact(artifact_dir)
    tokenizer = load_tokenizer(artifact.path) if artifact.has_tokenizer() else None
    eos_token_id, pad_token_id = _special_tokens(artifact, tokenizer)
    created = [_Worker(OrtSession(artifact, device=device), ThreadPoolExecutor(1)) for _ in range(workers)]
    description = created[0].session.description
    sessions: queue.Queue[_Worker] = queue.Queue()
    for worker in created:
        sessions.put(worker)
    # A fast tokenizer may refuse concurrent use ("Already borrowed"); tokenizing is cheap.
    tokenizer_lock = threading.Lock()
    # Requests admitted: generating (<= workers) or waiting for a session (<= max_queue).
    admitted = threading.BoundedSemaphore(workers + max_queue)

    @contextmanager
    def session():
        taken = sessions.get()
        try:
            yield taken
        finally:
            sessions.put(taken)

    app = FastAPI(title="uniattn-export python service", version="1")
    app.add_middleware(BodyLimit, limit=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _json_error(422, _one_line(exc))

    @app.exception_handler(UniAttnError)
    async def _bad_request(request: Request, exc: UniAttnError):
        return _json_error(422, str(exc))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        return _json_error(500, f"internal error: {type(exc).__name__}")

    @app.get("/health")
    def health() -> dict:
        return {
            "status": "ok", "runtime": description, "artifact": str(artifact.path), "workers": workers,
            "max_queue": max_queue, "max_positions": artifact.max_positions,
        }  # fmt: skip

    @app.post("/generate", response_model=GenerateResponse)
    def generate(body: GenerateRequest) -> GenerateResponse:
        if body.prompt is not None:
            if tokenizer is None:
                raise HTTPException(422, "prompt: this artifact has no tokenizer; send prompt_ids")
            with tokenizer_lock:
                ids = tokenizer(body.prompt)["input_ids"]
        else:
            ids = body.prompt_ids
        bad = [t for t in ids if not 0 <= t < artifact.vocab_size]
        if bad:
            raise HTTPException(422, f"prompt_ids: token id {bad[0]} is outside the vocabulary [0, {artifact.vocab_size})")
        check_prompts([ids], body.max_new_tokens, max_positions=artifact.max_positions)  # before waiting
        if not admitted.acquire(blocking=False):
            return _json_error(503, f"busy: {workers + max_queue} requests in progress; retry later", {"Retry-After": "1"})
        try:
            with session() as worker:
                run = worker.thread.submit(
                    worker.session.generate, [ids], body.max_new_tokens, sampling=body.sampling(),
                    eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                ).result()  # fmt: skip
        finally:
            admitted.release()
        tokens = run.sequences(eos_token_id)[0]
        text = None
        if tokenizer is not None:
            with tokenizer_lock:
                text = tokenizer.decode(tokens, skip_special_tokens=True)
        return GenerateResponse(
            tokens=tokens,
            text=text,
            finish_reason="eos" if eos_token_id is not None and tokens[-1] == eos_token_id else "length",
            prompt_tokens=len(ids),
        )

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="HTTP generation service over a uniattn-export artifact")
    parser.add_argument("artifact", type=Path, help="folder written by `uniattn-export model --target ort`")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="independent sessions (concurrent requests)")
    parser.add_argument("--max-queue", type=int, default=MAX_QUEUE, help="requests that may wait for a session (503 beyond)")
    parser.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES, help="largest request body (413 beyond)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    try:
        app = create_app(
            args.artifact, workers=args.workers, device=args.device,
            max_queue=args.max_queue, max_body_bytes=args.max_body_bytes,
        )  # fmt: skip
    except UniAttnError as exc:
        print(f"python_service: error: {exc}", file=sys.stderr)
        sys.exit(2)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
