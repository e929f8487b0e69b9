"""The OpenAPI 3.1 document of the API: schemas generated from the msgspec Structs."""

from __future__ import annotations

from typing import Any, Final

import msgspec

from stocksync.api.bodies import HealthBody, ReadyBody
from stocksync.codecs.events import IDENTIFIER_PATTERN
from stocksync.codecs.holds import ExtendRequest, Hold, HoldRequest, InsufficientBody
from stocksync.codecs.projections import (
    ChannelAvailability,
    ErrorBody,
    QueryRequest,
    QueryResponse,
)
from stocksync.config.settings import Settings

__all__ = ["OPENAPI_PATH", "openapi_document"]

OPENAPI_PATH: Final = "/v1/openapi.json"
_REF: Final = "#/components/schemas/{name}"
_JSON: Final = "application/json"

_ERRORS: Final = {
    "400": (
        "bad_request (malformed, unknown or repeated query parameter, malformed body)"
        " or invalid_sku."
    ),
    "401": "unauthorized: no bearer token, or an unknown one.",
    "403": (
        "forbidden: the token lacks the scope this endpoint needs"
        " (availability:read; admin grants every scope)."
    ),
    "404": "unknown_sku, unknown_channel, or not_found (no such endpoint).",
    "405": "method_not_allowed.",
    "408": "request_timeout: the headers or the body did not arrive in time.",
    "413": "too_many_skus: more SKUs, or a larger body, than one request may carry.",
    "429": (
        "rate_limited: the token is over its rate, or its address made too many failed"
        " authentications; see Retry-After."
    ),
    "500": "internal: a bug; details are logged, never returned.",
    "503": (
        "not_ready: the in-memory model is still loading; or overloaded: the server is at"
        " its connection or upload limit (see Retry-After)."
    ),
}
_HOLD_ERRORS: Final = {
    "400": "bad_request: malformed body, a ttl or line count over the configured limits.",
    "403": "forbidden: the token lacks the holds:write scope.",
    "404": "unknown_hold, or unknown_channel.",
    "409": "hold_conflict (another channel or other lines), or hold_ended.",
    "503": "not_ready: Redis did not answer.",
}


def _hold_errors(*statuses: str) -> dict[str, Any]:
    return {
        s: {"description": _HOLD_ERRORS.get(s) or _ERRORS[s], "content": _json("ErrorBody")}
        for s in statuses
    }


def _hold_paths(settings: Settings, auth: tuple[str, ...], secured: dict[str, Any]) -> Any:
    """The ``/v1/holds`` operations (api-v1, Holds)."""
    limits = settings.api.holds
    hold_id = {
        "name": "hold_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": IDENTIFIER_PATTERN},
    }
    answered = {"description": "The hold.", "content": _json("Hold")}
    create = {
        "operationId": "createHold",
        "summary": (
            f"Hold stock for a cart: up to {limits.max_lines} lines, ttl_seconds up to"
            f" {limits.max_ttl_seconds} (default {limits.default_ttl_seconds})."
        ),
        "requestBody": {"required": True, "content": _json("HoldRequest")},
        "responses": {
            "201": {"description": "The hold was granted.", "content": _json("Hold")},
            "200": {"description": "The same hold again: as it is.", "content": _json("Hold")},
            "409": {
                "description": (
                    "insufficient_stock (all or nothing, a line short: nothing is held; the"
                    " error lists the short lines), or hold_conflict."
                ),
                "content": {
                    _JSON: {
                        "schema": {
                            "anyOf": [
                                {"$ref": _REF.format(name="InsufficientBody")},
                                {"$ref": _REF.format(name="ErrorBody")},
                            ]
                        }
                    }
                },
            },
            **_hold_errors("400", *auth, "404", "503"),
        },
        **secured,
    }
    get = {
        "operationId": "getHold",
        "summary": "A hold and its status.",
        "parameters": [hold_id],
        "responses": {"200": answered, **_hold_errors(*auth, "404", "503")},
        **secured,
    }
    release = {
        "operationId": "releaseHold",
        "summary": "Release a hold (or show the end state it already had).",
        "parameters": [hold_id],
        "responses": {"200": answered, **_hold_errors(*auth, "404", "503")},
        **secured,
    }
    extend = {
        "operationId": "extendHold",
        "summary": "expires_at becomes now + ttl_seconds.",
        "parameters": [hold_id],
        "requestBody": {"required": True, "content": _json("ExtendRequest")},
        "responses": {"200": answered, **_hold_errors("400", *auth, "404", "409", "503")},
        **secured,
    }
    return {
        "/v1/holds": {"post": create},
        "/v1/holds/{hold_id}": {"get": get, "delete": release},
        "/v1/holds/{hold_id}/extend": {"post": extend},
    }


def _json(ref: str) -> dict[str, Any]:
    return {_JSON: {"schema": {"$ref": _REF.format(name=ref)}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: {"description": _ERRORS[s], "content": _json("ErrorBody")} for s in statuses}


def _constrain_query(schema: dict[str, Any], channels: list[str], max_skus: int) -> None:
    """Add to the generated QueryRequest schema what depends on configuration.

    The Struct types ``skus`` as plain strings so a batch is decoded without a
    regex per SKU; the API still answers ``invalid_sku``, which the document
    says with the identifier pattern.
    """
    properties = schema["properties"]
    properties["skus"] = {
        **properties["skus"],
        "maxItems": max_skus,
        "items": {"type": "string", "pattern": IDENTIFIER_PATTERN},
    }
    if len(channels) == 1:
        properties["channel"] = {"anyOf": [{"enum": channels}, {"type": "null"}], "default": None}
    else:
        properties["channel"] = {"enum": channels}
        schema["required"] = sorted({*schema.get("required", []), "channel"})


def _constrain_holds(components: dict[str, Any], channels: list[str], settings: Settings) -> None:
    """Add to the generated hold schemas what depends on configuration ([api.holds])."""
    limits = settings.api.holds
    ttl = {"type": "integer", "minimum": 1, "maximum": limits.max_ttl_seconds}
    request = components["HoldRequest"]["properties"]
    request["ttl_seconds"] = {
        "anyOf": [ttl, {"type": "null"}],
        "default": None,
        "description": f"seconds; absent: {limits.default_ttl_seconds}",
    }
    request["lines"] = {
        **request["lines"],
        "maxItems": limits.max_lines,
        # JSON Schema cannot say "distinct by sku"; this says as much of it as it can.
        "uniqueItems": True,
        "description": "distinct SKUs (two lines with one SKU are 400 bad_request)",
    }
    if len(channels) == 1:
        request["channel"] = {"anyOf": [{"enum": channels}, {"type": "null"}], "default": None}
    else:
        request["channel"] = {"enum": channels}
        schema = components["HoldRequest"]
        schema["required"] = sorted({*schema.get("required", []), "channel"})
    components["ExtendRequest"]["properties"]["ttl_seconds"] = ttl


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an API configured by ``settings``."""
    (_, components) = msgspec.json.schema_components(
        [
            ChannelAvailability,
            QueryRequest,
            QueryResponse,
            ErrorBody,
            HealthBody,
            ReadyBody,
            HoldRequest,
            ExtendRequest,
            Hold,
            InsufficientBody,
        ],
        ref_template=_REF,
    )
    channels = [c.name for c in settings.channels]
    _constrain_query(components["QueryRequest"], channels, settings.api.max_skus)
    _constrain_holds(components, channels, settings)
    correlation = {
        "name": "X-Correlation-ID",
        "in": "header",
        "required": False,
        "description": (
            "Echoed on the response when it is 1-256 visible ASCII characters;"
            " otherwise, or when absent, a generated one is returned."
        ),
        "schema": {"type": "string"},
    }
    echoed = {
        "X-Correlation-ID": {
            "description": "The request's correlation id, or a generated one.",
            "schema": {"type": "string"},
        }
    }
    etag = {
        "description": (
            "Opaque; changes whenever the body does (model generation, version, channel, detail)."
        ),
        "schema": {"type": "string"},
    }
    channel_param = {
        "name": "channel",
        "in": "query",
        "required": len(channels) != 1,
        "description": "A configured channel; may be omitted when exactly one is configured.",
        "schema": {"type": "string", "enum": channels},
    }
    auth_errors = ("401", "403", "429") if settings.api.tokens else ()
    secured: dict[str, Any] = {"security": [{"bearer": []}]} if settings.api.tokens else {}
    get_sku: dict[str, Any] = {
        "operationId": "getAvailability",
        "summary": "Availability of one SKU on one channel.",
        "parameters": [
            {
                "name": "sku",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": IDENTIFIER_PATTERN},
            },
            channel_param,
            {
                "name": "detail",
                "in": "query",
                "required": False,
                "description": "'nodes' adds per-node detail.",
                "schema": {"type": "string", "enum": ["nodes"]},
            },
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            },
            correlation,
        ],
        "responses": {
            "200": {
                "description": "The SKU's availability on the channel.",
                "headers": {"ETag": etag, **echoed},
                "content": _json("ChannelAvailability"),
            },
            "304": {"description": "Not modified since the ETag given.", "headers": {"ETag": etag}},
            **_errors("400", *auth_errors, "404", "503"),
        },
        **secured,
    }
    query = {
        "operationId": "queryAvailability",
        "summary": (
            f"Availability of up to {settings.api.max_skus} SKUs on one channel,"
            " known ones in request order."
        ),
        "parameters": [correlation],
        "requestBody": {"required": True, "content": _json("QueryRequest")},
        "responses": {
            "200": {
                "description": "Known SKUs in request order; the unknown ones listed apart.",
                "headers": echoed,
                "content": _json("QueryResponse"),
            },
            **_errors("400", *auth_errors, "404", "408", "413", "503"),
        },
        **secured,
    }
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "stocksync availability API",
            "version": "1",
            "description": "Sellable availability per SKU and channel, served from memory.",
        },
        "paths": {
            "/v1/availability/{sku}": {"get": get_sku},
            "/v1/availability/query": {"post": query},
            **_hold_paths(settings, auth_errors, secured),
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "The process is alive.",
                    "responses": {"200": {"description": "Alive.", "content": _json("HealthBody")}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "The model is loaded and following changes.",
                    "responses": {
                        "200": {"description": "Ready.", "content": _json("ReadyBody")},
                        **_errors("503"),
                    },
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document.",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI 3.1 document.",
                            "content": {_JSON: {"schema": {"type": "object"}}},
                        },
                        **_errors(*(e for e in auth_errors if e != "403")),
                    },
                    **secured,
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics.",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": components},
    }
    if settings.api.tokens:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document
