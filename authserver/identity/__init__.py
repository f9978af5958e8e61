"""Who is this? Verifies device and admin JWTs (secret, PEM key or JWKS). No HTTP types."""

from authserver.fingerprint import fingerprint
from authserver.identity.model import Identity, JWTSettings
from authserver.identity.verifier import JWTVerifier, bearer_token

__all__ = ["Identity", "JWTSettings", "JWTVerifier", "bearer_token", "fingerprint"]
