"""``kit.openapi``: a route is documented from its shape and its dependencies, so a route
added later needs nothing more than the dependencies it already uses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI
from pydantic import BaseModel

from stallholder.kit import openapi
from stallholder.kit.errors import Forbidden, Unauthenticated

SCHEMES = {
    "Staff": {"type": "http", "scheme": "bearer"},
    "Robot": {"type": "http", "scheme": "bearer"},
}


class StaffOnly(Forbidden):
    slug = "staff-only"
    title = "Staff only"


@openapi.documents(Unauthenticated, accepts=("Staff", "Robot"))
def who() -> str:
    return "staff"


@openapi.documents(StaffOnly, accepts=("Staff",))
def staff(caller: Annotated[str, Depends(who)]) -> str:
    return caller


class Note(BaseModel):
    text: str


def document() -> dict[str, Any]:
    router = APIRouter(prefix="/v1")

    @router.get("/notes")
    def list_notes(_: Annotated[str, Depends(who)], starting_after: str | None = None) -> None:
        return None

    @router.post("/notes/{note_id}/pin", status_code=201, responses={402: {"description": "Pay"}})
    def pin(note_id: str, body: Note, _: Annotated[str, Depends(staff)]) -> None:
        return None

    @router.get("/ping")
    def ping() -> None:
        return None

    app = FastAPI()
    app.include_router(router)
    openapi.install(app, security_schemes=SCHEMES)
    return app.openapi()


def test_a_route_is_documented_from_its_parameters_body_method_and_dependencies() -> None:
    paths = document()["paths"]

    pin = paths["/v1/notes/{note_id}/pin"]["post"]
    assert sorted(pin["responses"]) == [
        "201", "400", "401", "402", "403", "404", "409", "413", "422", "500",
    ]  # fmt: skip
    assert pin["security"] == [{"Staff": []}]
    assert pin["responses"]["402"]["description"] == "Pay"
    assert pin["responses"]["403"]["description"] == "- `staff-only`: Staff only"
    assert pin["responses"]["400"]["description"].splitlines() == [
        "- `invalid-characters`: NUL character in the URL",
        "- `malformed-json`: The body is not valid JSON",
        "- `invalid-idempotency-key`: Invalid Idempotency-Key header",
    ]
    assert pin["responses"]["409"]["description"].splitlines() == [
        "- `idempotency-key-reused`: Idempotency key reused with a different request",
        "- `idempotency-key-in-use`: A request with this key is still in progress",
        "- `conflict`: Conflicting concurrent change",
    ]

    listing = paths["/v1/notes"]["get"]
    assert sorted(listing["responses"]) == ["200", "400", "401", "422", "500"]
    assert "`invalid-cursor`" in listing["responses"]["400"]["description"]
    assert listing["security"] == [{"Staff": []}, {"Robot": []}]

    ping = paths["/v1/ping"]["get"]
    assert sorted(ping["responses"]) == ["200", "400", "500"]
    assert "security" not in ping


def test_every_problem_has_the_problem_schema_and_fastapis_own_422_is_gone() -> None:
    doc = document()

    assert doc["components"]["securitySchemes"] == SCHEMES
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "ValidationError" not in doc["components"]["schemas"]
    assert doc["components"]["schemas"]["Problem"] == openapi.PROBLEM_SCHEMA
    for item in doc["paths"].values():
        for operation in item.values():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    assert response["content"] == {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }
