"""The worker-process path for the other provider kinds (see test_worker_path.py):
chat bodies translated for ``anthropic`` and ``gemini`` keys, and Messages
bodies translated for ``gemini``, in a counting worker — tests of
``test_anthropic.py`` and ``test_provider_kinds.py`` run again unchanged with
every body counted in a worker."""

from __future__ import annotations

import pytest

from tests.proxy.conftest import WORKER_PATH_GROUP
from tests.proxy.test_anthropic import (  # noqa: F401 (fixtures and tests run again here)
    app,
    messages_api,
    test_completion_and_stream,
    test_output_limit_and_tools,
    test_upstream_errors_in_openai_envelope,
)
from tests.proxy.test_provider_kinds import (  # noqa: F401 (fixtures and tests run again here)
    _remember_key_codes,
    azure,
    gemini,
    test_azure_deployment_and_exact_cut,
    test_gemini_policy_and_exact_cut,
    test_gemini_through_the_messages_api,
    test_gemini_tools_and_errors,
    test_gemini_whole_and_stream,
)
from tests.proxy.test_worker_path import gateway  # noqa: F401 (every body in a worker)

pytestmark = pytest.mark.xdist_group(WORKER_PATH_GROUP)
