"""The control API's OpenAPI 3.1 document, built from the registry's own rule table.

The STREAM schemas come from `registry.json_schema()`, the same table that validates request
bodies, so the document cannot promise what the API refuses or the reverse.
"""

from __future__ import annotations

from typing import Any

from sfmd import __version__
from sfmd.registry import FIELDS, json_schema
from sfmd.registry.fields import SOURCES, fields_of
from sfmd.status import STATES, STATUS_KEYS

ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    409: "name_taken | credential_in_use | conflict | not_clustered",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid | reload_refused",
    502: "lookup_failed | rules_unavailable",
    503: "cluster_unavailable",
}

STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(STATUS_KEYS),
    "properties": {
        "state": {"enum": list(STATES)},
        "since": {
            "type": "string", "format": "date-time",
            "description": "when the stream entered its state; for a stream stopped since"
            " before this daemon started, the daemon's start (it has been stopped at least"
            " that long)",
        },
        "messages": {"type": "integer", "minimum": 0},
        "tweets": {"type": "integer", "minimum": 0},
        "bytes": {"type": "integer", "minimum": 0},
        "reconnects": {
            "type": "integer", "minimum": 0,
            "description": "connections opened after the first: reconnects_after_failure"
            " plus reconnects_planned",
        },
        "last_error": {"type": ["string", "null"]},
        "current_file": {"type": ["string", "null"]},
        "connected_since": {
            "type": ["string", "null"], "format": "date-time",
            "description": "when the current streaming began; null while not streaming",
        },
        "last_gap": {
            "type": ["object", "null"],
            "description": "the latest span the stream was set but not collecting: from, to"
            " (null while it lasts), reason, error, refilled",
        },
        "down_since": {
            "type": ["string", "null"], "format": "date-time",
            "description": "when the current outage began (the first failure since the"
            " stream last streamed), kept across retries; null while streaming or stopped",
        },
        "next_attempt": {
            "type": ["string", "null"], "format": "date-time",
            "description": "in backoff (or a crashed task's restart wait): when the next"
            " connection attempt is due; null otherwise",
        },
        "reconnects_after_failure": {
            "type": "integer", "minimum": 0,
            "description": "reconnects that followed a lost, refused or stalled connection",
        },
        "reconnects_planned": {
            "type": "integer", "minimum": 0,
            "description": "reconnects sfmd chose: new filter settings",
        },
        "last_message_at": {
            "type": ["string", "null"], "format": "date-time",
            "description": "when the stream last stored a message; null: none since this"
            " daemon started it (alert on a silent stall with /metrics'"
            " sfmd_stream_last_message_timestamp_seconds)",
        },
        "last_publish_at": {
            "type": ["string", "null"], "format": "date-time",
            "description": "when the stream last published a file; null: none since this"
            " daemon started it",
        },
        "connection": {
            "type": "object",
            "description": "v2 filters: the connection they share with the credential's other"
            " v2 filters (its state and counters, its rules at the API, rules no stream owns).",
        },
    },
}


def _strip(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k != "$schema"}


def stream_schema() -> dict[str, Any]:
    settings = _strip(json_schema())
    properties = {
        **settings["properties"],
        "people_ids": {
            "type": "object",
            "additionalProperties": {"type": "string", "pattern": "^[0-9]+$"},
            "description": "Screen names users/lookup resolved, with their ids (set by sfmd).",
        },
        "people_unresolved": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Screen names users/lookup did not know; they are not followed.",
        },
        "status": {"$ref": "#/components/schemas/Status"},
    }
    derived = {"twitter": ["people_ids", "people_unresolved"]}  # what sfmd adds
    by_kind = {"mastodon": {"tag", "list"}}  # shown only by the kinds that have them
    every = set.intersection(*(set(fields_of(source)) for source in SOURCES))
    return {
        "type": "object",
        "properties": properties,
        "required": [*(f for f in FIELDS if f in every), "status"],
        # Each network's streams show their own settings: a Bluesky stream has no track.
        "allOf": [
            {
                "if": {"properties": {"source": {"const": source}}},
                "then": {"required": [
                    *(f for f in fields_of(source) if f not in by_kind.get(source, ())),
                    *derived.get(source, []),
                ]},
            }
            for source in SOURCES
        ],
    }


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": f"error {ERROR_CODES[status]}",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def document() -> dict[str, Any]:
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "the stream's name",
    }
    body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/StreamSettings"}}
        },
    }
    patch_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/StreamPatch"}}
        },
    }
    write_errors = {str(s): _error_response(s) for s in (400, 404, 409, 413, 415, 422, 502)}
    stream = _json("Stream", "the stream, with its status")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sfmd control API",
            "version": __version__,
            "description": "JSON over HTTP on sfmd's Unix socket. A refused request changes "
            "nothing. Bodies must be application/json and at most 1 MiB.",
        },
        "paths": {
            "/health": {"get": {"operationId": "health", "responses": {
                "200": _json("Health", "the daemon is up")}}},
            "/streams": {
                "get": {"operationId": "listStreams", "responses": {
                    "200": _json("StreamList", "every stream")}},
                "post": {
                    "operationId": "createStream",
                    "requestBody": body,
                    "responses": {"201": _json("Stream", "created"), **{
                        k: v for k, v in write_errors.items() if k != "404"}},
                },
            },
            "/streams/{name}": {
                "parameters": [name_param],
                "get": {"operationId": "showStream", "responses": {
                    "200": stream, "404": _error_response(404)}},
                "patch": {
                    "operationId": "modifyStream",
                    "requestBody": patch_body,
                    "responses": {"200": stream, **write_errors},
                },
                "delete": {"operationId": "deleteStream", "responses": {
                    "204": {"description": "deleted; its published files stay"},
                    "404": _error_response(404)}},
            },
            "/streams/{name}/start": {
                "parameters": [name_param],
                # Starting checks what a change checks: the credential can serve the stream,
                # a v2 filter's rules pass the API's dry run.
                "post": {"operationId": "startStream", "responses": {
                    "200": stream, **{k: v for k, v in write_errors.items()
                                      if k not in ("400", "413", "415")}}},
            },
            "/streams/{name}/stop": {
                "parameters": [name_param],
                "post": {"operationId": "stopStream", "responses": {
                    "200": stream, "404": _error_response(404), "409": _error_response(409)}},
            },
            "/streams/{name}/restart": {
                "parameters": [name_param],
                # An inactive stream is started, with a start's checks.
                "post": {
                    "operationId": "restartStream",
                    "description": "Stop the stream and start it again (a fresh connection "
                    "and file); an inactive stream is made active. Settings are unchanged.",
                    "responses": {"200": stream, **{k: v for k, v in write_errors.items()
                                                    if k not in ("400", "413", "415")}},
                },
            },
            "/reload": {
                "post": {
                    "operationId": "reload",
                    "description": "Read the credentials file again (its mode is checked "
                    "again). Streams whose credential's keys changed reconnect; streams that "
                    "failed for a credential that now serves them start; streams whose "
                    "credential left the file fail, with the reason. A file start-up would "
                    "refuse is refused (422 reload_refused) and the credentials in use stay.",
                    "responses": {"200": _json("Reloaded", "the credentials now in use"),
                                  "422": _error_response(422)},
                },
            },
            "/cluster": {"get": {
                "operationId": "cluster",
                "description": "Cluster mode: the live hosts with their last heartbeat, and "
                "which host holds which connection (its lease's epoch). One host alone "
                "answers enabled: false.",
                "responses": {"200": _json("Cluster", "the hosts and their connections"),
                              "503": _error_response(503)},
            }},
            "/cluster/drain": {"post": {
                "operationId": "drainHost",
                "description": "Move every connection off a host before maintenance (undo: "
                "true gives it connections again; a host that starts clears its own drain).",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["host"],
                    "properties": {"host": {"type": "string"}, "undo": {"type": "boolean"}},
                }}}},
                "responses": {
                    "200": {"description": "the host's drain as stored", "content": {
                        "application/json": {"schema": {"type": "object"}}}},
                    **{str(s): _error_response(s) for s in (400, 404, 409, 413, 415, 503)},
                },
            }},
            "/metrics": {"get": {"operationId": "metrics", "responses": {"200": {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"operationId": "openapi", "responses": {"200": {
                "description": "this document",
                "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "schemas": {
                "StreamSettings": _strip(json_schema()),
                "StreamPatch": _strip(json_schema(for_patch=True)),
                "Stream": stream_schema(),
                "StreamList": {
                    "type": "object",
                    "required": ["streams"],
                    "properties": {
                        "streams": {"type": "array",
                                    "items": {"$ref": "#/components/schemas/Stream"}}
                    },
                },
                "Status": STATUS_SCHEMA,
                "Cluster": {
                    "type": "object",
                    "required": ["enabled", "host", "hosts", "connections"],
                    "properties": {
                        "enabled": {"type": "boolean"},
                        "host": {"type": ["string", "null"], "description": "this host"},
                        "hosts": {"type": "array", "items": {"type": "object"}},
                        "connections": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status", "streams", "uptime", "states", "failed"],
                    "properties": {
                        "status": {"const": "ok", "description": "the daemon answers"},
                        "streams": {"type": "integer", "minimum": 0},
                        "uptime": {"type": "number", "minimum": 0},
                        "states": {
                            "type": "object",
                            "description": "how many streams are in each state",
                            "additionalProperties": {"type": "integer", "minimum": 1},
                        },
                        "failed": {
                            "type": "array",
                            "description": "the failed streams: each needs a person",
                            "items": {
                                "type": "object",
                                "required": ["name", "last_error"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "last_error": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                },
                "Reloaded": {
                    "type": "object",
                    "required": ["credentials", "streams", "config"],
                    "properties": {
                        "config": {
                            "type": "object",
                            "description": "the config file is not reloaded: its keys that "
                            "changed since start-up (they need a restart), or the error a "
                            "restart would now stop at",
                            "required": ["needs_restart", "error"],
                            "properties": {
                                "needs_restart": {"type": "array", "items": {"type": "string"}},
                                "error": {"type": ["string", "null"]},
                            },
                        },
                        "credentials": {
                            "type": "object",
                            "description": "credential names (never keys) added, changed "
                            "and removed",
                            "required": ["added", "changed", "removed"],
                            "properties": {
                                key: {"type": "array", "items": {"type": "string"}}
                                for key in ("added", "changed", "removed")
                            },
                        },
                        "streams": {
                            "type": "array",
                            "description": "active streams on those credentials, as the "
                            "reload left them",
                            "items": {
                                "type": "object",
                                "required": ["name", "credential", "state", "last_error"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "credential": {"type": "string"},
                                    "state": {"enum": list(STATES)},
                                    "last_error": {"type": ["string", "null"]},
                                },
                            },
                        },
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string"},
                        "message": {"type": "string"},
                    },
                },
            }
        },
    }
