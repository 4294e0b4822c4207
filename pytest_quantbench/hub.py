"""Whether the Hugging Face hub can be used: the offline switch, and a quick check that its host answers."""

from __future__ import annotations

import os
import urllib.error
import urllib.request


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set true (1, ON, YES, TRUE, any case, as huggingface_hub reads it): the local cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the hub answers at all (its clients retry for tens of seconds before giving up): one HEAD request
    to HF_ENDPOINT, through the proxies of HTTPS_PROXY / NO_PROXY as the clients would go. Any HTTP answer counts."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        opener = urllib.request.build_opener()  # reads the proxy variables now (urlopen keeps its first opener)
        opener.open(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return True  # the hub answered, if not with 200
    except (OSError, ValueError):  # URLError, timeouts, refused connections, a malformed endpoint
        return False
    return True
