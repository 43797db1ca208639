"""schemathesis hooks for scripts/schemathesis.

POST /api/v1/messages also takes NDJSON (`application/x-ndjson`, one JSON
object a line), documented as a string: it goes on the wire as that text.
"""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
