"""A minimal HTTP service around the Python runtime (uniattn_export.targets.ort.OrtSession).

    python examples/python_service/app.py ARTIFACT [--host 127.0.0.1] [--port 8000]
        [--workers 1] [--device cpu|cuda]

POST /generate   {"prompt": "text"} or {"prompt_ids": [ids]}, plus optional "max_new_tokens"
                 (16, at most 1024), "temperature" (sampling when given), "top_k", "top_p",
                 "seed" (0). Answers {"tokens", "text", "finish_reason": "eos"|"length",
                 "prompt_tokens"}; "text" is null when the artifact has no tokenizer.
                 Invalid requests get 422 {"detail": "<field>: <problem>"}.
GET  /health     {"status": "ok", "runtime", "artifact", "workers"}

Concurrency: `--workers` independent sessions (each its own ONNX Runtime session and KV
cache) wait in a queue; a request takes one, generates and puts it back, so a request never
shares a cache with another and its answer is exactly what it would get alone. Requests are
not batched together: batching would change the padding each row sees and which random
draw each row gets, so answers would depend on the traffic. FastAPI runs the endpoint in
its thread pool; requests beyond `--workers` wait for a free session.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from uniattn_export.errors import UniAttnError
from uniattn_export.export import load_artifact
from uniattn_export.model.tokenizer import load_tokenizer
from uniattn_export.targets.ort import OrtSession
from uniattn_export.targets.session import Sampling

MAX_NEW_TOKENS = 1024


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, min_length=1, description="prompt text (needs a tokenizer in the artifact)")
    prompt_ids: list[int] | None = Field(None, min_length=1, description="prompt token ids")
    max_new_tokens: int = Field(16, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(None, gt=0, description="sample at this temperature (default: greedy)")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = Field(0, ge=0, lt=2**64)

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


def create_app(artifact_dir: str | Path, *, workers: int = 1, device: str = "cpu") -> FastAPI:
    """The service over one artifact, with `workers` independent sessions."""
    if workers < 1:
        raise UniAttnError(f"workers must be >= 1, got {workers}", "pass --workers 1 or more")
    artifact = load_artifact(artifact_dir)
    tokenizer = load_tokenizer(artifact.path) if artifact.has_tokenizer() else None
    eos_token_id, pad_token_id = _special_tokens(artifact, tokenizer)
    created = [OrtSession(artifact, device=device) for _ in range(workers)]
    description = created[0].description
    sessions: queue.Queue[OrtSession] = queue.Queue()
    for runtime in created:
        sessions.put(runtime)
    # A fast tokenizer may refuse concurrent use ("Already borrowed"); tokenizing is cheap.
    tokenizer_lock = threading.Lock()

    @contextmanager
    def session():
        taken = sessions.get()
        try:
            yield taken
        finally:
            sessions.put(taken)

    app = FastAPI(title="uniattn-export python service", version="1")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"detail": _one_line(exc)})

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "runtime": description, "artifact": str(artifact.path), "workers": workers}

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
        with session() as runtime:
            run = runtime.generate(
                [ids], body.max_new_tokens, sampling=body.sampling(),
                eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            )  # fmt: skip
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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    try:
        app = create_app(args.artifact, workers=args.workers, device=args.device)
    except UniAttnError as exc:
        print(f"python_service: error: {exc}", file=sys.stderr)
        sys.exit(2)
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
