"""The text endpoints: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`, over the
InferenceServicer's ListModels, Generate and GenerateStream.

A streamed call takes its first chunk before answering (`HttpCalls.first`), so a request refused by
admission or validation gets its own HTTP status; an error after the first chunk is sent as an
`error` event, then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api import pb
from gateway.http_api.calls import EventStream, HttpCalls, event_frames
from gateway.http_api.replies import ChunkWriter, chat_completion, completion
from gateway.http_api.requests import chat_request, completion_request


class TextRoutes:
    def __init__(self, calls: HttpCalls, servicer: Any) -> None:
        self.calls, self.servicer = calls, servicer

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]

    async def models(self, request: Request) -> Response:
        ctx = self.calls.context(request)
        reply = await self.calls.unary(request, ctx, self.servicer.ListModels(pb.ListModelsRequest(), ctx))
        data = [
            {
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": "bailing",
                "family": m.family,
                "max_model_len": m.max_model_len,
                "live_workers": m.live_workers,
                "modalities": list(m.modalities),
                "outputs": list(m.outputs),
                "voices": list(m.voices),
            }
            for m in reply.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def chat(self, request: Request) -> Response:
        return await self._generate(request, chat_request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, completion_request, chat=False)

    async def _generate(self, request: Request, read: Callable[..., Any], chat: bool) -> Response:
        ctx = self.calls.context(request)
        req, stream, include_usage = read(await self.calls.json(request))
        if not stream:
            reply = await self.calls.unary(request, ctx, self.servicer.Generate(req, ctx))
            return JSONResponse(chat_completion(reply) if chat else completion(reply))
        chunks = self.servicer.GenerateStream(req, ctx)
        first = await self.calls.first(request, ctx, chunks)
        writer = ChunkWriter(req.model, chat, include_usage, spoken=req.HasField("speech"))
        return EventStream(event_frames(chunks, first, ctx, writer.events))
