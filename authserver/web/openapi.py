"""The OpenAPI 3.1 description of the gateway; a test keeps it in step with the router.

The paths are written here and in `openapi_admin`; every body schema comes from `shapes`.
"""

from __future__ import annotations

from typing import Any

from authserver import __version__
from authserver.web import shapes
from authserver.web.openapi_admin import admin_paths, admin_security_schemes

PROBLEM = {"$ref": "#/components/schemas/Problem"}


def _problem_responses(*statuses: int) -> dict[str, Any]:
    names = {
        400: "Malformed body or parameter",
        401: "Missing, malformed, expired or revoked credential",
        403: "Authenticated but not allowed",
        404: "No such resource",
        413: "Body too large",
        422: "Grant too broad for one token",
        429: "Rate limited; see Retry-After",
        501: "Feature not configured",
        502: "The upstream refused the call",
        503: "Upstream or store unavailable; see Retry-After",
    }
    return {
        str(s): {
            "description": names[s],
            "content": {"application/problem+json": {"schema": PROBLEM}},
        }
        for s in statuses
    }


def openapi_document() -> dict[str, Any]:
    """The whole description, built fresh (it is small)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "authserver",
            "version": __version__,
            "description": "Token gateway: device JWT in, MQTT credentials out.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                **admin_security_schemes(),
            },
            "schemas": shapes.schemas(),
        },
        "paths": {
            "/v1/token": {
                "post": {
                    "operationId": "issueToken",
                    "summary": "MQTT credentials for the caller's policy grants",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/TokenRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Ready MQTT credentials",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/TokenResponse"}
                                }
                            },
                        },
                        **_problem_responses(400, 401, 403, 413, 422, 429, 502, 503),
                    },
                }
            },
            "/v1/device-credential": {
                "post": {
                    "operationId": "deviceCredential",
                    "summary": "The MQTT login of the caller's device credential (registered "
                    "when the clientId has none); the policy must grant deviceCredentials",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/DeviceCredentialRequest"}
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "A ready MQTT username and password",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/DeviceCredentialLogin"}
                                }
                            },
                        },
                        **_problem_responses(400, 401, 403, 413, 429, 502, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "Liveness",
                    "responses": {"200": _json_ok("The process is alive")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Readiness: JWT keys and blocklist loaded, not draining",
                    "responses": {
                        "200": _json_ok("Ready; `checks` also reports Redis and the circuit"),
                        "503": _json_ok("Not ready; `checks` says why"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "responses": {"200": _json_ok("The OpenAPI description")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of this process (unauthenticated: keep it "
                    "off the public ingress, allow only the scraper by NetworkPolicy)",
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format 0.0.4",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            **admin_paths(),
        },
    }


def _json_ok(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
