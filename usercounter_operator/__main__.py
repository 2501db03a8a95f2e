"""`python -m usercounter_operator`: the operator, watching UserCounters in one namespace.

Before handing over to kopf it checks that it can work at all: a Kubernetes
configuration exists (in-cluster service account, KUBECONFIG or ~/.kube/config), the API
server answers, the CRD is installed and UserCounters may be listed. When one is missing
it says which in one line and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import httpx2
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.core.exceptions import ApiError, ConfigError
from lightkube.generic_resource import create_namespaced_resource

from usercounter_operator.spec import GROUP, KIND, PLURAL, VERSION

EXIT_NOT_READY = 2


class NotReady(Exception):
    """The operator cannot work in this environment; the message says why."""


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m usercounter_operator",
        description="The UserCounter operator (kopf): reconciles usercounters.usercounter.dev.",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("WATCH_NAMESPACE") or os.environ.get("POD_NAMESPACE"),
        help="namespace to watch (default: WATCH_NAMESPACE, then POD_NAMESPACE)",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf's liveness endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=8081, help="Prometheus /metrics (default 8081)"
    )
    args = parser.parse_args(argv)
    if not args.namespace:
        parser.error("no namespace: pass --namespace or set WATCH_NAMESPACE")
    return args


async def preflight(namespace: str, http_timeout: float = 5.0) -> None:
    """Raises NotReady unless UserCounters can be listed in the namespace."""
    try:
        config = KubeConfig.from_env()
    except ConfigError as e:
        raise NotReady(
            f"no Kubernetes configuration: not in a pod and no kubeconfig ({e})"
        ) from None
    client = AsyncClient(config, namespace=namespace, timeout=httpx2.Timeout(http_timeout))
    resource = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)
    try:
        async for _ in client.list(resource, namespace=namespace, chunk_size=1):
            break
    except ApiError as e:
        code = e.status.code
        if code == 404:
            raise NotReady(
                f"the {PLURAL}.{GROUP} CRD is not installed: kubectl apply -k k8s/operator"
            ) from None
        if code in (401, 403):
            raise NotReady(
                f"not allowed to list {PLURAL} in namespace {namespace} (HTTP {code}): "
                "check the operator's Role and RoleBinding"
            ) from None
        raise NotReady(f"the Kubernetes API answered HTTP {code}: {e.status.message}") from None
    except (httpx2.HTTPError, OSError) as e:
        raise NotReady(
            f"cannot reach the Kubernetes API: {type(e).__name__}: {e or 'no answer'}"
        ) from None
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        asyncio.run(preflight(args.namespace))
    except NotReady as e:
        print(f"usercounter-operator: {e}", file=sys.stderr)
        return EXIT_NOT_READY

    import kopf
    from prometheus_client import start_http_server

    from usercounter_operator import handlers  # registers the handlers with kopf

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start_http_server(args.metrics_port)
    kopf.run(
        standalone=True,
        namespaces=[args.namespace],
        liveness_endpoint=args.liveness,
    )
    del handlers
    return 0


if __name__ == "__main__":
    sys.exit(main())
