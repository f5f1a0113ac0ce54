"""OpenAI's HTTP schema over the batcher: /v1/chat/completions, /v1/completions (both streamable as
server-sent events), /v1/models and /health, close enough that the official `openai` client works as is.

Errors are OpenAI's JSON (`{"error": {"message", "type", "param", "code"}}`) with status 400 or 404 and
never stop the server. A request's `model` picks the base or one adapter; unknown fields (penalties,
logit_bias, ...) are ignored, `n` other than 1 is refused. Imported only once fastapi is known installed.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException

from tuna.serve.batcher import Batcher, Job

DEFAULT_MAX_TOKENS = 1024  # a request without max_tokens gets this, or what is left of the context if less
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: dict | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[dict] | None = None


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(Sampling):
    prompt: str | list[str] | list[int]


class RequestError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def error_body(message: str, param=None, code=None, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def build_app(batcher: Batcher, tokenizer, base_name: str, adapter_names: list[str], context: int):
    app = FastAPI(title="tuna serve")
    created = int(time.time())
    models = {base_name: None, **{name: name for name in adapter_names}}

    @app.exception_handler(RequestError)
    async def refused(_, exc: RequestError):
        return JSONResponse(error_body(str(exc), exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
        message = "the body is not valid JSON" if first.get("type") == "json_invalid" else \
            f"{where or 'body'}: {first.get('msg')}"
        return JSONResponse(error_body(message, where), status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):
        return JSONResponse(error_body(str(exc.detail)), status_code=exc.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", **batcher.load}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "tuna",
             **({"parent": base_name} if adapter else {})} for name, adapter in models.items()]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        prompt = chat_prompt(tokenizer, body.messages)
        return await respond(body, prompt, request, chat=True)

    @app.post("/v1/completions")
    async def complete(body: CompletionRequest, request: Request):
        text = body.prompt
        if isinstance(text, list) and text and all(isinstance(t, int) for t in text):
            prompt = list(text)
        elif isinstance(text, list):
            if len(text) != 1:
                raise RequestError("this server takes one prompt per request", param="prompt")
            prompt = tokenizer(text[0]).input_ids
        else:
            prompt = tokenizer(text).input_ids
        return await respond(body, prompt, request, chat=False)

    async def respond(body: Sampling, prompt: list[int], request: Request, *, chat: bool):
        if body.model not in models:
            raise RequestError(f"The model `{body.model}` does not exist; this server has: {', '.join(models)}",
                               status=404, param="model", code="model_not_found")
        if body.n != 1:
            raise RequestError("n must be 1 on this server", param="n")
        job, events = make_job(body, prompt, models[body.model], context)
        batcher.submit(job)
        reply = Reply(chat, body.model, len(prompt))
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return EventSourceResponse(stream(reply, job, events, usage), ping=15)
        try:
            text, finish, produced = "", None, 0
            while finish is None:
                event = await events.get()
                if "error" in event:
                    return JSONResponse(error_body(event["error"], kind="server_error"), status_code=500)
                text += event.get("text", "")
                finish, produced = event.get("done"), event.get("tokens", produced)
            return reply.whole(text, finish, produced)
        finally:
            job.cancelled.set()

    async def stream(reply: Reply, job: Job, events: asyncio.Queue, usage: bool):
        try:
            if reply.chat:
                yield json.dumps(reply.chunk("", None, first=True))
            while True:
                event = await events.get()
                if "error" in event:
                    yield json.dumps(error_body(event["error"], kind="server_error"))
                    break
                if event.get("text"):
                    yield json.dumps(reply.chunk(event["text"], None))
                if "done" in event:
                    yield json.dumps(reply.chunk("", event["done"]))
                    if usage:
                        yield json.dumps({**reply.chunk("", None), "choices": [], "usage": reply.usage(event["tokens"])})
                    break
            yield "[DONE]"
        finally:
            job.cancelled.set()  # a client gone mid-stream frees its row at the batcher's next step

    return app


def chat_prompt(tokenizer, messages: list[Message]) -> list[int]:
    turns = []
    for i, message in enumerate(messages):
        if message.role not in ROLES:
            raise RequestError(f"messages[{i}].role: unknown role {message.role!r}; expected one of "
                               f"{', '.join(ROLES)}", param=f"messages.{i}.role")
        content = message.content
        if isinstance(content, list):
            if any(part.get("type") != "text" for part in content):
                raise RequestError(f"messages[{i}].content: only text parts are supported", param=f"messages.{i}")
            content = "".join(part.get("text", "") for part in content)
        turns.append({"role": ROLES[message.role], "content": content or ""})
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model has no chat template; use /v1/completions")
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template that refuses this conversation (e.g. roles out of order)
        raise RequestError(f"the chat template refused these messages: {exc}", param="messages") from None
    return tokenizer(text, add_special_tokens=False).input_ids


def make_job(body: Sampling, prompt: list[int], adapter: str | None, context: int) -> tuple[Job, asyncio.Queue]:
    """The batcher's job for a request, refused here if it cannot fit the context; and the queue its events
    arrive on, fed from the batcher's thread."""
    if len(prompt) >= context:
        raise RequestError(f"the prompt is {len(prompt)} tokens; the context is {context}", param="messages")
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if asked is not None and asked < 1:
        raise RequestError("max_tokens must be at least 1", param="max_tokens")
    if asked is not None and len(prompt) + asked > context:
        raise RequestError(f"max_tokens {asked} and the prompt's {len(prompt)} tokens exceed the context of "
                           f"{context}", param="max_tokens")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    loop, events = asyncio.get_running_loop(), asyncio.Queue()
    job = Job(prompt=prompt, max_tokens=asked or min(DEFAULT_MAX_TOKENS, context - len(prompt)), adapter=adapter,
              temperature=body.temperature, top_p=body.top_p, stop=stop, seed=body.seed,
              emit=lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
    return job, events


class Reply:
    """The response objects of one request, chat or text completion, whole or in chunks."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int):
        self.chat, self.model, self.prompt_tokens = chat, model, prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())

    def usage(self, produced: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": produced,
                "total_tokens": self.prompt_tokens + produced}

    def head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def whole(self, text: str, finish: str, produced: int) -> dict:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}} if self.chat else \
            {"index": 0, "text": text}
        kind: Literal["chat.completion", "text_completion"] = "chat.completion" if self.chat else "text_completion"
        return {**self.head(kind), "choices": [{**choice, "finish_reason": finish, "logprobs": None}],
                "usage": self.usage(produced)}

    def chunk(self, text: str, finish: str | None, first: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
            choice = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": text}
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self.head(kind), "choices": [{**choice, "finish_reason": finish, "logprobs": None}]}
