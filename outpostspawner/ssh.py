"""SSH port forwards for ForwardBaseSpawner, made by the forwarder process.

:class:`SSHForwardMixin` implements the forwarding seams of
:class:`~outpostspawner.seams.ForwardSeams`: it resolves the ``ssh_*`` hooks once
per call, validates them, stores the resolved connection parameters (never key
contents, only the key's path) in ``port_forward_info`` and asks the forwarder
(:mod:`outpostspawner.forwarder`). The bytes of the forwarded connections never
pass through the Hub's event loop.
"""

from __future__ import annotations

import logging
import os

from traitlets import Callable, CaselessStrEnum, Float, Integer, Unicode, Union
from traitlets.config import LoggingConfigurable

from . import hooks
from .errors import OutpostSpawnError
from .forwarder.errors import ForwardError
from .forwarder.options import ConfigError, ForwardSpec, SSHTarget, check_host, check_port
from .forwarder.supervisor import (
    ForwarderBackend,
    ForwarderSupervisor,
    RemoteForwarder,
    SupervisorConfig,
    get_backend,
)

#: what the user is told, per forwarder error code (the log gets the details)
_USER_REASONS = {
    "auth_failed": "the login was refused (check ssh_username and ssh_key)",
    "host_key_changed": "the node's host key has changed, so the connection was refused",
    "host_key_unknown": "the node's host key is not known and StrictHostKeyChecking is yes",
    "key_unreadable": "the SSH key cannot be read or used",
    "known_hosts": "the known_hosts file cannot be used",
    "unavailable": "the SSH forwarder is not available",
}


def _optional_port(v):
    return None if v is None else hooks.is_port(v)


def hook_up_forwarder_log(app_log: logging.Logger | logging.LoggerAdapter) -> None:
    """Send the records of the Hub-side forwarder code (supervisor, client) to
    JupyterHub's log, as JupyterHub does with tornado's loggers. Without this they
    reach no handler: their INFO records ("forwarder-0 started", "restored 3
    forwards") are lost and warnings are printed bare by ``logging.lastResort``.
    Nothing changes when the ``outpostspawner.forwarder`` logger (or a parent of
    it) was configured by someone else.
    """
    logger = logging.getLogger("outpostspawner.forwarder")
    if logger.handlers or logger.parent is not logging.root:
        return
    if isinstance(app_log, logging.LoggerAdapter):
        app_log = app_log.logger
    if isinstance(app_log, logging.Logger) and app_log is not logging.root:
        logger.parent = app_log


class SSHForwardMixin(LoggingConfigurable):
    """The built-in SSH forwarder (see the *SSH forwarding* docs)."""

    ssh_forwarder_mode = CaselessStrEnum(
        ["process", "remote"],
        "process",
        help="""
        Where the SSH forwards run.

        - ``process``: forwarder processes that the Hub starts on first use,
          watches and restarts (``ssh_forwarder_shards`` of them). They end with
          the Hub; set ``ssh_recreate_at_start`` to rebuild the forwards of running
          servers after a Hub restart.
        - ``remote``: a standalone forwarder (``python -m outpostspawner.forwarder
          --listen ...``, for example in its own pod) at ``ssh_forwarder_url``,
          authenticated with the token in ``ssh_forwarder_token_file``. Its
          forwards survive Hub restarts.
        """,
    ).tag(config=True)

    ssh_forwarder_url = Unicode(
        "",
        help="Base URL of a standalone forwarder (``ssh_forwarder_mode = 'remote'``).",
    ).tag(config=True)

    ssh_forwarder_token_file = Unicode(
        "",
        help="""
        File with the bearer token of a standalone forwarder. It is read on first
        use and again when the forwarder refuses the token.
        """,
    ).tag(config=True)

    ssh_forwarder_ca_certs = Unicode(
        "",
        help="CA bundle to verify an ``https://`` ``ssh_forwarder_url`` (default: system CAs).",
    ).tag(config=True)

    ssh_forwarder_shards = Integer(
        1,
        min=1,
        help="""
        Number of forwarder processes in ``process`` mode. Forwards to one SSH
        node (same port, user and key) always go to the same process and share one
        SSH connection; more processes spread the traffic over more CPU cores.
        """,
    ).tag(config=True)

    ssh_forwarder_reconnect_delay = Float(
        1.0,
        help="""
        Seconds before the first reconnect attempt after a failed SSH connection;
        the delay doubles per failure up to ``ssh_forwarder_reconnect_max_delay``.
        Also the first delay before a crashed forwarder process is restarted.
        """,
    ).tag(config=True)

    ssh_forwarder_reconnect_max_delay = Float(
        30.0, help="Longest delay between SSH reconnect attempts, in seconds."
    ).tag(config=True)

    ssh_forward_listen_address = Unicode(
        "0.0.0.0",
        help="""
        Address the forwards listen on, where the forwarder runs. ``0.0.0.0`` lets
        a Kubernetes Service reach them; ``127.0.0.1`` keeps them local to the Hub
        (enough with ``svc_create = False``).
        """,
    ).tag(config=True)

    ssh_known_hosts = Unicode(
        "outpostspawner_known_hosts",
        help="""
        The known_hosts file of the forwarder, relative to the Hub's working
        directory or absolute; keep it on persistent storage. With
        ``StrictHostKeyChecking accept-new`` (the default) the first host key seen
        for a node and port is added; a changed key is refused. Set
        ``UserKnownHostsFile`` in ``ssh_forward_options`` to use another file for
        some nodes.
        """,
    ).tag(config=True)

    ssh_keepalive_interval = Float(
        15.0,
        help="""
        Seconds between SSH keepalives (``ServerAliveInterval`` in
        ``ssh_forward_options`` overrides it). A node that does not answer
        ``ssh_keepalive_count_max`` of them in a row is considered gone and the
        connection is made again. ``0`` disables keepalives.
        """,
    ).tag(config=True)

    ssh_keepalive_count_max = Integer(
        3, min=1, help="Unanswered keepalives before the SSH connection is dropped."
    ).tag(config=True)

    ssh_connect_timeout = Float(
        10.0,
        help="Seconds to connect and log in to an SSH node (``ConnectTimeout`` overrides it).",
    ).tag(config=True)

    ssh_remote_forward_port = Union(
        [Integer(), Callable()],
        default_value=None,
        allow_none=True,
        help="""
        Port the remote forward listens on at ``ssh_remote_node``; a number or a
        hook ``(spawner, remote_port_forward_info)``. Default: the server's port
        (``remote_port_forward_info["port"]``). ``0`` lets the node choose; the
        chosen port is stored as ``port_forward_info["remote"]["remote_port"]``.
        """,
    ).tag(config=True)

    ssh_remote_forward_listen_address = Unicode(
        "",
        help="""
        Address the remote forward listens on at ``ssh_remote_node``. ``""``:
        what the node's sshd allows (``GatewayPorts``).
        """,
    ).tag(config=True)

    ssh_remote_forward_target = Unicode(
        "",
        help="""
        ``host:port`` of the Hub API as seen from the forwarder, where the remote
        forward leads. Default: the Hub's own ``hub_ip``/``hub_port``
        (``127.0.0.1`` when the Hub listens on every address). Set it for a
        standalone forwarder, e.g. ``"hub:8081"``.
        """,
    ).tag(config=True)

    # --- the forwarder -------------------------------------------------------

    def _forwarder(self) -> ForwarderBackend:
        """The backend shared by all spawners with the same forwarder settings."""
        hook_up_forwarder_log(self.log)
        if self.ssh_forwarder_mode == "remote":
            url, token_file = self.ssh_forwarder_url, self.ssh_forwarder_token_file
            if not url or not token_file:
                raise OutpostSpawnError(
                    "The SSH forwarder is misconfigured: ssh_forwarder_mode 'remote' needs "
                    "ssh_forwarder_url and ssh_forwarder_token_file.",
                    reason="config",
                )
            ca = self.ssh_forwarder_ca_certs or None
            return get_backend(
                ("remote", url, token_file, ca),
                lambda: RemoteForwarder(url, token_file, ca_certs=ca),
            )
        config = SupervisorConfig(
            shards=self.ssh_forwarder_shards,
            reconnect_delay=self.ssh_forwarder_reconnect_delay,
            reconnect_max_delay=self.ssh_forwarder_reconnect_max_delay,
            restart_delay=self.ssh_forwarder_reconnect_delay,
            restart_max_delay=self.ssh_forwarder_reconnect_max_delay,
        )
        return get_backend(("process", config), lambda: ForwarderSupervisor(config))

    # --- resolving the hooks ---------------------------------------------------

    def _config_error(self, message: str) -> OutpostSpawnError:
        self.log.error("%s: %s", self._log_name, message)
        return OutpostSpawnError(
            f"The SSH port forward cannot be set up: {message}.", reason="config"
        )

    async def _ssh_target(self, info: dict, *, remote: bool) -> SSHTarget:
        """Resolve node, port, user, key and options for one forward (once)."""
        if remote:
            names = ("ssh_remote_node", "ssh_remote_port", "ssh_remote_username")
            key_name, options_name = "ssh_remote_key", "ssh_forward_remote_options"
            offered = {"remote_port_forward_info": info}
        else:
            names = ("ssh_node", "ssh_port", "ssh_username")
            key_name, options_name = "ssh_key", "ssh_forward_options"
            offered = {"port_forward_info": info}
        node = await hooks.resolve(self, names[0], check=hooks.is_optional_str, **offered)
        if not node:
            raise self._config_error(f"{names[0]} is not set")
        # the name the remote side knows (GET /hub/api/recreateforward/{node})
        info["ssh_node"] = node
        if not remote and self.ssh_node_mapping is not None:
            node = await hooks.resolve(
                self, "ssh_node_mapping", ssh_node=node, check=hooks.is_nonempty_str
            )
        port = await hooks.resolve(self, names[1], check=hooks.is_port, **offered)
        username = await hooks.resolve(self, names[2], check=hooks.is_nonempty_str, **offered)
        key = await hooks.resolve(self, key_name, check=hooks.is_nonempty_str, **offered)
        options = await hooks.resolve(self, options_name, check=hooks.is_dict, **offered)
        defaults = {
            "ServerAliveInterval": self.ssh_keepalive_interval,
            "ServerAliveCountMax": self.ssh_keepalive_count_max,
            "ConnectTimeout": self.ssh_connect_timeout,
            "StrictHostKeyChecking": "accept-new",
            "UserKnownHostsFile": self._known_hosts_path(),
        }
        try:
            return SSHTarget.build(node, port, username, key, options, defaults=defaults)
        except ConfigError as e:
            raise self._config_error(str(e)) from None

    def _known_hosts_path(self) -> str:
        return os.path.abspath(self.ssh_known_hosts)

    def _stored_target(self, info: dict) -> SSHTarget | None:
        """The target stored by an earlier add (after a Hub restart)."""
        if not isinstance(info.get("ssh"), dict) or not info.get("forward_id"):
            return None
        try:
            return SSHTarget.from_dict(info["ssh"])
        except ConfigError as e:
            raise self._config_error(f"stored SSH settings are invalid ({e})") from None

    def _hub_target(self) -> tuple[str, int]:
        if self.ssh_remote_forward_target:
            host, sep, port = self.ssh_remote_forward_target.rpartition(":")
            if not sep:
                raise self._config_error("ssh_remote_forward_target must be host:port")
            try:
                return check_host(host, "ssh_remote_forward_target"), check_port(port)
            except ConfigError as e:
                raise self._config_error(str(e)) from None
        host = self.hub.ip
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        return host, int(self.hub.port)

    # --- talking to the forwarder ----------------------------------------------

    async def _forwarder_add(self, spec: dict, target: SSHTarget, *, keep: bool) -> dict:
        try:
            ForwardSpec.from_dict(spec)
        except ConfigError as e:
            raise self._config_error(str(e)) from None
        timeout = float(target.option("ConnectTimeout", self.ssh_connect_timeout)) + 10
        try:
            forward, created = await self._forwarder().add(spec, timeout=timeout, keep=keep)
        except ForwardError as e:
            reason = _USER_REASONS.get(e.code, e.message.rstrip("."))
            raise OutpostSpawnError(
                f"The SSH port forward through {target.host}:{target.port} could not be "
                f"created: {reason}.",
                reason="ssh",
                log_message=(
                    f"{self._log_name}: forward {spec['id']} via {target.label} failed "
                    f"({e.code}): {e.message}"
                ),
            ) from None
        self.log.info(
            "%s: %s forward %s %s:%s -> %s:%s via %s%s",
            self._log_name,
            spec["kind"],
            spec["id"],
            forward.get("listen_host") or "*",
            forward.get("listen_port"),
            spec["dest_host"],
            spec["dest_port"],
            target.label,
            "" if created else " (kept)",
        )
        if forward.get("error"):
            self.log.warning(
                "%s: forward %s is not up yet: %s",
                self._log_name,
                spec["id"],
                forward["error"].get("message"),
            )
        return forward

    async def _forwarder_remove(self, info: dict) -> None:
        forward_id = info.get("forward_id")
        if not forward_id:
            return
        routing = {"id": forward_id, "ssh": info.get("ssh") or {}}
        try:
            await self._forwarder().remove(forward_id, spec=routing if info.get("ssh") else None)
        except ForwardError as e:
            self.log.warning(
                "%s: removing forward %s failed: %s", self._log_name, forward_id, e.message
            )

    # --- the seams ---------------------------------------------------------------

    async def _forward_add(self, info: dict) -> None:
        """Forward ``listen_address:local_port`` to ``hostname:target_port`` through
        ``ssh_node``. Called again after a Hub restart with the stored ``info``:
        then the stored SSH settings are used and an existing forward is kept."""
        target = self._stored_target(info)
        restoring = target is not None
        if target is None:
            target = await self._ssh_target(info, remote=False)
        spec = {
            "id": info.get("forward_id") or f"{self.start_id}.local",
            "kind": "local",
            "ssh": target.to_dict(),
            "listen_host": self.ssh_forward_listen_address,
            "listen_port": info["local_port"],
            "dest_host": info["hostname"],
            "dest_port": info["target_port"],
        }
        info["ssh"] = spec["ssh"]
        info["forward_id"] = spec["id"]
        await self._forwarder_add(spec, target, keep=restoring)

    async def _forward_remove(self, info: dict) -> None:
        await self._forwarder_remove(info)

    async def _remote_forward_add(self, info: dict) -> None:
        """A remote forward: ``ssh_remote_node`` listens and connections come back
        to the Hub API (``ssh_remote_forward_target``)."""
        target = self._stored_target(info)
        restoring = target is not None
        if restoring:
            listen_port = info.get("remote_port") or info["port"]
        else:
            target = await self._ssh_target(info, remote=True)
            listen_port = await hooks.resolve(
                self,
                "ssh_remote_forward_port",
                remote_port_forward_info=info,
                check=_optional_port,
            )
            if listen_port is None:
                listen_port = info["port"]
        dest_host, dest_port = self._hub_target()
        spec = {
            "id": info.get("forward_id") or f"{self.start_id}.remote",
            "kind": "remote",
            "ssh": target.to_dict(),
            "listen_host": self.ssh_remote_forward_listen_address,
            "listen_port": listen_port,
            "dest_host": dest_host,
            "dest_port": dest_port,
        }
        info["ssh"] = spec["ssh"]
        info["forward_id"] = spec["id"]
        forward = await self._forwarder_add(spec, target, keep=restoring)
        info["remote_port"] = forward.get("listen_port") or listen_port

    async def _remote_forward_remove(self, info: dict) -> None:
        await self._forwarder_remove(info)
