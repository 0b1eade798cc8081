"""twistd plugin: `twistd txgate --config gw.ini` (kept import-light on purpose)."""
from twisted.application.service import ServiceMaker

txgate = ServiceMaker(
    "txgate",
    "txgate.tap",
    "TLS API gateway: TLS listeners, HTTP/1.1 and HTTP/2 reverse proxy",
    "txgate",
)
