"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from pixtral.errors import InputError

log = logging.getLogger("pixtral.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class APIError(Exception):
    """An error the server answers with; `message` tells the client what to fix."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": _TYPES.get(
                    self.status, "invalid_request_error" if self.status < 500 else "server_error"
                ),
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def input_error(error: InputError) -> APIError:
    """The engine's InputError as a 400; a subclass that names its OpenAI `code`/`param`
    (ContextLengthError: `context_length_exceeded`) keeps them."""
    return bad_request(str(error), param=getattr(error, "param", None), code=getattr(error, "code", None))


def _loc_to_param(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    # pydantic adds the union member tag (e.g. "text", "image_url", "str") to the path; keep it: it helps.
    return ".".join(parts) if parts else "body"


def validation_error_to_api(errors: list[dict]) -> APIError:
    """Turn pydantic errors into one 400 whose message names the first field and what to fix."""
    if not errors:
        return bad_request("The request body is invalid.")
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    param = _loc_to_param(loc)
    msg = first.get("msg", "invalid value")
    if first.get("type") == "json_invalid":
        return bad_request(
            "The request body is not valid JSON: "
            + str(first.get("ctx", {}).get("error", msg))
            + ". Send a JSON object with Content-Type: application/json.",
            code="invalid_json",
        )
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return bad_request(f"Invalid value for '{param}': {msg}{more}.", param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_to_api(list(exc.errors())).response()

    @app.exception_handler(ValidationError)
    async def _pydantic(_: Request, exc: ValidationError) -> JSONResponse:
        return validation_error_to_api(list(exc.errors())).response()

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> JSONResponse:
        return input_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            message = (
                "Unknown path. The API serves POST /v1/chat/completions, GET /v1/models, /health, /metrics."
            )
        elif status == 405:
            message = "Method not allowed on this path."
        else:
            message = str(exc.detail)
            if status == 400 and "parsing the body" in message:
                message = "The request body could not be parsed as JSON. Send a JSON object."
        return APIError(status, message, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(500, "Internal server error; the server log has the details.").response()
