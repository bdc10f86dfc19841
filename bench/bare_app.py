"""The baseline: a bare FastAPI app with one POST endpoint, served exactly like Stallholder."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

app = FastAPI()


@app.post("/echo")
async def echo(body: dict[str, Any]) -> dict[str, Any]:
    return {"object": "echo", "received": len(body)}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/hooks")
async def hooks(body: dict[str, Any]) -> dict[str, bool]:
    """A webhook receiver that accepts everything (the webhook benchmark's target)."""
    return {"received": True}
