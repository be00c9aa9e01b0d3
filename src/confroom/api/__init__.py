"""The REST API: live call control (jambonz-compatible), conference views and health.

`confroom.api.app` holds the aiohttp application and `ApiServer` (started by `Server.start`
when `http.port` > 0); `openapi.json` beside it documents every route and is served at
`GET /openapi.json`.
"""

from confroom.api.app import ApiServer, build_app, openapi_document

__all__ = ["ApiServer", "build_app", "openapi_document"]
