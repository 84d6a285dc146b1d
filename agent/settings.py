"""The agent's one settings object: a TOML file, ADGAN_* environment variables (nested with
'__'), a .env file, and secrets from systemd's CREDENTIALS_DIRECTORY. Validated once at
start; `adgan agent validate-config` reports every bad field with its path.

Precedence, highest first: environment, .env, credentials (secrets only), the TOML file.
Nothing is read at import time: `load_settings` reads the sources when it is called.
"""
from __future__ import annotations

import codecs
import os
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from agent.records import error_lines
from agent.scoring.onnxruntime import OnnxRuntimeSettings
from agent.scoring.tensorrt import TensorRTSettings
from agent.settings_types import SettingError, StationPath, Strict, printable_topic, topic_level

__all__ = ["AgentSettings", "SettingError", "StationPath", "describe_errors", "load_settings", "topic_level",
           "with_credentials"]  # (and each section's model; the types from agent/settings_types.py, as before)


class RealSenseSource(Strict):
    type: Literal["realsense"] = Field("realsense", description="a RealSense camera, live or a recording")
    serial: str | None = Field(None, description="camera serial number (None: the first camera)")
    recording: StationPath | None = Field(None, description="play back a .bag or .db3 recording instead of a camera")
    width: int = Field(640, ge=16, description="colour and depth width in pixels")
    height: int = Field(480, ge=16, description="colour and depth height in pixels")
    fps: int = Field(30, ge=1, le=90, description="frames per second")
    visual_preset: str | None = Field(None, description="depth visual preset name, e.g. 'High Accuracy'")
    real_time: bool = Field(True, description="play a recording at its recorded rate (false: as fast as read)")


class FolderSourceSettings(Strict):
    type: Literal["folder"] = Field("folder", description="replay a folder (raw captures or paper-layout samples)")
    path: StationPath = Field(description="the folder (rgb/, depth/ and, for raw captures, meta/)")
    loop: bool = Field(False, description="start again at the end (otherwise the agent stops at the end)")
    fps: float = Field(5.0, ge=0, description="replay rate (0: as fast as the agent inspects)")
    frames: str | None = Field(None, description="LO:HI frame numbers to replay (half-open)")

    @field_validator("frames")
    @classmethod
    def _frames_spec(cls, v: str | None) -> str | None:
        from agent.sources.dataset import parse_frames
        parse_frames(v)
        return v


class SyntheticSourceSettings(Strict):
    type: Literal["synthetic"] = Field("synthetic", description="synthetic parts on a table (demos, tests)")
    seed: int = Field(0, description="scene seed")
    classes: list[Literal["rectangle", "cylinder", "sphere"]] = Field(
        ["rectangle", "cylinder", "sphere"], min_length=1, description="classes of the parts that pass")
    defects: list[Literal["dent", "hole", "chunk", "blemish", "foreign"]] = Field(
        ["dent", "hole", "chunk", "blemish", "foreign"], description="defect kinds")
    variety: Literal["family", "product"] = Field(
        "family", description="what a class's parts are: family = every part a new product of the class's "
                              "shape; product = the station's one product of the class, made to a tolerance")
    defect_rate: float = Field(0.2, ge=0, le=1, description="probability of a defective part")
    empty_rate: float = Field(0.0, ge=0, le=1, description="probability that a part slot stays empty "
                                                           "(1: the empty table, for capture-reference)")
    frames_per_part: int = Field(4, ge=1, description="frames each part stays in view")
    gap_frames: int = Field(2, ge=0, description="empty-table frames between parts")
    count: int | None = Field(None, ge=1, description="stop after this many frames (None: endless)")
    fps: float = Field(5.0, ge=0, description="frame rate (0: as fast as the agent inspects)")


SourceSettings = Annotated[Union[RealSenseSource, FolderSourceSettings, SyntheticSourceSettings],
                           Field(discriminator="type")]
BackendSettings = Annotated[Union[OnnxRuntimeSettings, TensorRTSettings], Field(discriminator="type")]


class SegmentationSettings(Strict):
    max_depth_mm: int = Field(700, gt=0, le=65535, description="depth beyond this is background (paper: 700)")
    surface_tolerance: float = Field(0.1, gt=0, lt=1, description="relative depth band of the empty surface")
    reference: StationPath | None = Field(None, description="empty-surface reference (.npz); None: RANSAC plane, "
                                                            "logged")
    roi: tuple[int, int, int, int] | None = Field(None, description="x, y, w, h region of interest in pixels "
                                                  "(x, y >= 0, w, h > 0, inside the frame; None: the whole frame)")
    opening_px: int = Field(1, ge=0, le=10, description="speckle removal radius (0: the paper's raw mask)")

    @field_validator("roi")
    @classmethod
    def _roi_box(cls, v):
        if v is not None and (v[0] < 0 or v[1] < 0 or v[2] <= 0 or v[3] <= 0):
            raise ValueError(f"must be x, y, w, h with x, y >= 0 and w, h > 0 (pixels), got {list(v)}")
        return v


class ModelSettings(Strict):
    bundles: dict[str, StationPath] = Field(description="bundle folder per class, e.g. "
                                                        "{rectangle = '/var/lib/adgan/b'}")
    check_bundles: dict[str, StationPath] = Field(
        default_factory=dict, description="bundles of the line's other products that this station does not "
        "inspect, read only for their class PCAs (the class check, model pca: adgan calibrate --class-check): no "
        "engine and no threshold of their own, so a station of one product can tell it from the others, e.g. "
        "{sphere = '/var/lib/adgan/bundles/sphere'}")
    expected_class: str = Field(description="the class being inspected now (switchable over MQTT)")
    thresholds: StationPath = Field(description="thresholds.json calibrated on these bundles; read again when it "
                             "changes (a file that cannot be used is refused and said, and the thresholds in "
                             "use stay)")
    seed: int = Field(0, description="seed of the initial latents; must equal calibration's")
    backend: BackendSettings = Field(default_factory=OnnxRuntimeSettings, description="engine and its options")
    anomaly_map: bool = Field(False, description="attach a small |G(z*) - x| map (PNG, base64; smoothed as the "
                              "bundle says) to anomaly events")

    @model_validator(mode="after")
    def _expected_has_a_bundle(self):
        if self.expected_class not in self.bundles:
            raise ValueError(f"expected_class {self.expected_class!r} has no bundle "
                             f"(bundles: {', '.join(sorted(self.bundles)) or 'none'})")
        both = sorted(set(self.bundles) & set(self.check_bundles))
        if both:
            raise ValueError(f"check_bundles gives {', '.join(map(repr, both))}, which bundles inspects already: "
                             "a class's bundle is in one or the other")
        return self


class TriggerSettings(Strict):
    mode: Literal["continuous", "mqtt", "every_frame", "gpio"] = Field(
        "continuous", description="continuous: one inspection per object passage; mqtt: on .../trigger/set; "
                                  "every_frame: each frame is one inspection (replays of single captures); "
                                  "gpio: on an edge of gpio.trigger_line (and on .../trigger/set)")
    min_area_px: int = Field(1500, ge=1, description="mask area that counts as an object present")
    settle_frames: int = Field(3, ge=1, description="frames the object must stay before it is scored")
    settle_tolerance: float = Field(0.1, gt=0, lt=1, description="still: within this area change (2x: overlap lost)")
    clear_frames: int = Field(2, ge=1, description="frames without an object (or the inspected part) ending a passage")
    max_pending: int = Field(1, ge=1, le=100, description="requested inspections that may wait at once; more are "
                                                         "coalesced (mqtt), or errors in their turn (gpio parts)")
    max_wait_s: float = Field(2.0, ge=0, le=3600, description="a requested inspection (MQTT, OPC UA, a GPIO part "
                              "after its delay_ms) whose frame is not taken within this long of its request is "
                              "answered as not inspected: by then its part has likely left the camera (the loop or "
                              "the disk held it, or the camera was slow to deliver). The same limit for a GPIO edge read late, and for trigger/sets that came while "
                              "the process did not run (a freeze). Raise it where the line holds each part until "
                              "its verdict; 0: no limit")


class MqttSettings(Strict):
    host: str = Field("127.0.0.1", description="broker host")
    port: int = Field(1883, ge=1, le=65535, description="broker port")
    username: str | None = Field(None, description="user name")
    password: SecretStr | None = Field(None, description="password (secret: environment or credential 'mqtt_password')")
    tls_ca: StationPath | None = Field(None, description="CA certificate: enables TLS")
    tls_cert: StationPath | None = Field(None, description="client certificate (read again before a connection attempt "
                                  "when renewed on disk)")
    tls_key: StationPath | None = Field(None, description="client key")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of events")
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keepalive")
    topic_prefix: str = Field("adgan", description="topics are <prefix>/<station_id>/...")
    protocol: Literal["auto", "3.1.1", "5"] = Field(
        "auto", description="MQTT version. 5: the broker's refusals of events (not authorised, too large) are said, "
                            "and refused events stay in the outbox; auto: 5, and 3.1.1 where the broker refuses 5")
    check_delivery: bool = Field(True, description="on MQTT 3.1.1 links, subscribe to this station's own events "
                                                   "and say when acknowledged events do not come back (a broker "
                                                   "drops what its ACL forbids and still acknowledges it)")
    verdict_max_age_s: float = Field(2.0, gt=0, le=60, description="a verdict (OK/NG) is published only if its "
                                     "event leaves within this time of the decision (acknowledged links); never queued")
    broker_drops: bool = Field(True, description="watch the broker's count of messages it dropped (mosquitto: $SYS/"
                               "broker/publish/messages/dropped) and say when it rises: commands may be among them")

    @field_validator("topic_prefix")
    @classmethod
    def _no_wildcards(cls, v: str) -> str:
        if not v or any(c in v for c in "+#") or v.startswith("/") or v.endswith("/"):
            raise ValueError("must be a non-empty topic without wildcards or leading/trailing '/'")
        return printable_topic(v)

    @model_validator(mode="after")
    def _cert_and_key_together(self):
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


class OutboxSettings(Strict):
    path: StationPath = Field(Path("/var/lib/adgan/outbox.sqlite"), description="durable event outbox (SQLite, WAL)")
    max_events: int = Field(100_000, ge=10, description="when full, the oldest events are dropped and counted")
    memory_events: int = Field(10_000, ge=0, description="events held in memory while the disk cannot be written "
                                                         "(full or failing); beyond, the oldest are dropped and "
                                                         "counted")
    reserve_mb: float = Field(64.0, ge=0, le=1_000_000, description="space set aside beside the outbox "
                              "(<path>.reserve) and released when the disk is full, so events go on being stored "
                              "on disk (64 MB: about 30,000 events of 1.5 kB); 0: none")


class GpioSettings(Strict):
    enabled: bool = Field(False, description="use digital I/O (trigger input, verdict outputs)")
    backend: Literal["gpiod", "jetson", "memory"] = Field(
        "gpiod", description="gpiod: the kernel's GPIO character device through libgpiod v2; jetson: NVIDIA's "
                             "Jetson.GPIO, line offsets are BOARD pin numbers and chip is unused; memory: "
                             "in-process lines (tests, simulations)")
    chip: str = Field("/dev/gpiochip0", min_length=1, description="the GPIO chip (gpiodetect lists them)")
    trigger_line: int | None = Field(None, ge=0, description="input line offset of the trigger (a light barrier or "
                                                             "a PLC output); needs trigger.mode 'gpio'")
    trigger_edge: Literal["rising", "falling"] = Field("rising", description="the edge that starts an inspection")
    trigger_active_low: bool = Field(False, description="the trigger input is active at the low level")
    debounce_ms: float = Field(5.0, ge=0, le=1000, description="an edge counts only after this long without edges")
    dead_time_ms: float = Field(200.0, ge=0, le=60000, description="edges within this time of a counted edge "
                                                                    "are ignored (counted as dead_time)")
    delay_ms: float = Field(0.0, ge=0, le=60000, description="from the edge to the inspection request (the part "
                                                             "settling in front of the camera)")
    ok_line: int | None = Field(None, ge=0, description="output line offset: the part is OK")
    ng_line: int | None = Field(None, ge=0, description="output line offset: the part is NG (anomalous)")
    error_line: int | None = Field(None, ge=0, description="output line offset: not inspected (error, no object)")
    busy_line: int | None = Field(None, ge=0, description="output line offset: active from the trigger to the "
                                                          "verdict that leaves nothing waiting")
    ready_line: int | None = Field(None, ge=0, description="output line offset: active while the engines are warm "
                                                           "and the source delivers frames")
    output_mode: Literal["pulse", "hold"] = Field("pulse", description="pulse: a verdict line is active for "
                                                                       "pulse_ms; hold: until the next part")
    pulse_ms: float = Field(100.0, gt=0, le=60000, description="length of a verdict pulse")
    active_low: bool = Field(False, description="outputs: active is the low level")

    @model_validator(mode="after")
    def _distinct_lines(self):
        used = [v for v in (self.trigger_line, self.ok_line, self.ng_line, self.error_line, self.busy_line,
                            self.ready_line) if v is not None]
        if len(used) != len(set(used)):
            raise ValueError(f"each line offset may be used once, got {used}")
        return self


class OpcUaSettings(Strict):
    enabled: bool = Field(False, description="serve OPC UA on opc.tcp://<host>:<port>/adgan/")
    host: str = Field("127.0.0.1", min_length=1, description="address to bind (loopback unless configured)")
    port: int = Field(4840, ge=1, le=65535, description="TCP port (4840: the OPC UA default)")
    security: Literal["Basic256Sha256", "None"] = Field(
        "Basic256Sha256", description="Basic256Sha256: signed and encrypted with the station's certificate; "
                                      "None: plain, only when set explicitly")
    certificate: StationPath | None = Field(None, description="the station's certificate (DER or PEM), for "
                                                       "Basic256Sha256")
    private_key: StationPath | None = Field(None, description="the certificate's private key (PEM)")
    application_uri: str | None = Field(None, description="the server's application URI, as in its certificate "
                                                         "(None: urn:adgan-edge:<station_id>)")
    username: str | None = Field(None, description="the one user that may connect (needed with Basic256Sha256)")
    password: SecretStr | None = Field(None, description="its password (secret: environment ADGAN_OPCUA__PASSWORD "
                                                         "or credential 'opcua_password')")
    max_clients: int = Field(16, ge=1, le=1000, description="connections held at once; one more is closed at "
                             "once, counted and said (a station has a few clients: SCADA, an HMI, a gateway)")

    @model_validator(mode="after")
    def _secured(self):
        if self.enabled and self.security != "None":
            missing = [k for k in ("certificate", "private_key", "username") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"security Basic256Sha256 needs {', '.join(missing)} (or security = 'None', "
                                 "explicitly)")
        return self


class WebSettings(Strict):
    enabled: bool = Field(False, description="serve the operator's page on http://<host>:<port>/")
    host: str = Field("127.0.0.1", min_length=1, description="address to bind (loopback unless configured)")
    port: int = Field(8080, ge=1, le=65535, description="TCP port of the page")
    history: int = Field(20, ge=1, le=1000, description="verdicts listed on the page")


class MetricsSettings(Strict):
    enabled: bool = Field(False, description="serve Prometheus metrics on http://<host>:<port>/metrics")
    host: str = Field("127.0.0.1", min_length=1, description="address to bind (loopback unless configured; "
                                                             "0.0.0.0 for every interface)")
    port: int = Field(9108, ge=1, le=65535, description="TCP port of the metrics endpoint")


class HealthSettings(Strict):
    status_interval_s: float = Field(10.0, gt=0, description="heartbeat period on .../status")
    frame_timeout_s: float = Field(5.0, gt=0, description="no frame for this long means reconnect the camera")
    reconnect_min_s: float = Field(1.0, gt=0, description="first wait before reopening a failed source")
    reconnect_max_s: float = Field(30.0, gt=0, description="longest wait between reopen attempts (doubling)")
    stop_flush_s: float = Field(5.0, ge=0, description="on stop, wait this long for the broker to take events")
    stall_s: float = Field(20.0, gt=0, description="the inspection loop not coming round for this long is said, with "
                           "every thread's stack (keep it below the unit's WatchdogSec, 30)")
    log_buffer_kb: int = Field(1024, ge=64, le=65536, description="log lines waiting for an output that takes "
                               "nothing (a stuck journal) are held up to this many KiB, then dropped and counted "
                               "(status.log.dropped): inspection never waits for the log")


class AgentSettings(BaseSettings):
    """Everything the station agent needs."""

    model_config = SettingsConfigDict(env_prefix="ADGAN_", env_nested_delimiter="__", extra="forbid",
                                      env_file=None, validate_default=True, allow_inf_nan=False)

    station_id: str = Field(description="this station's name in MQTT topics")
    source: SourceSettings = Field(description="where frames come from")
    segmentation: SegmentationSettings = Field(default_factory=SegmentationSettings, description="object vs table")
    model: ModelSettings | None = Field(None, description="bundles, thresholds and the engine: needed by run and "
                                                        "validate-config, not by capture-reference and capture-frames "
                                                        "(a station records its frames before it has a model)")
    trigger: TriggerSettings = Field(default_factory=TriggerSettings, description="when to score")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="the broker")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="events not yet acknowledged")
    health: HealthSettings = Field(default_factory=HealthSettings, description="heartbeat and watchdog")
    gpio: GpioSettings = Field(default_factory=GpioSettings, description="digital I/O (off by default)")
    opcua: OpcUaSettings = Field(default_factory=OpcUaSettings, description="OPC UA server (off by default)")
    web: WebSettings = Field(default_factory=WebSettings, description="the operator's page (off by default)")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus endpoint (off by "
                                                                                  "default)")

    @model_validator(mode="after")
    def _a_part_can_be_seen(self):
        """A view that no part could fill is a station blind without a word: the object mask is cut
        to the region of interest before trigger.min_area_px counts a part as present."""
        roi, src, need = self.segmentation.roi, self.source, self.trigger.min_area_px
        live = src.type == "realsense" and src.recording is None  # (a recording brings its own size)
        if roi is not None and roi[2] * roi[3] < need:
            raise ValueError(f"segmentation.roi {list(roi)} holds {roi[2] * roi[3]} pixels, fewer than "
                             f"trigger.min_area_px ({need}): no part could ever count as present")
        if live and roi is not None and (roi[0] >= src.width or roi[1] >= src.height):
            raise ValueError(f"segmentation.roi {list(roi)} lies outside the camera's {src.width}x{src.height} "
                             "frame (source.width, source.height): no part could ever be seen")
        if live and src.width * src.height < need:
            raise ValueError(f"trigger.min_area_px ({need}) is more than the camera's {src.width}x{src.height} "
                             "frame holds (source.width, source.height): no part could ever count as present")
        return self

    @model_validator(mode="after")
    def _gpio_trigger(self):
        g, mode = self.gpio, self.trigger.mode
        if mode == "gpio" and not (g.enabled and g.trigger_line is not None):
            raise ValueError("trigger.mode 'gpio' needs gpio.enabled = true and gpio.trigger_line")
        if mode != "gpio" and g.enabled and g.trigger_line is not None:
            raise ValueError(f"gpio.trigger_line is set but trigger.mode is {mode!r}: set trigger.mode = 'gpio'")
        return self

    @field_validator("station_id")
    @classmethod
    def _topic_safe(cls, v: str) -> str:
        return topic_level(v)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file is the lowest layer: the environment and .env override it.
        return (init_settings, env_settings, dotenv_settings, file_secret_settings, _TomlFile(settings_cls))


class _TomlFile(TomlConfigSettingsSource):
    """The TOML file, a byte order mark at its start skipped (Windows Notepad's "UTF-8 with BOM";
    the .env and thresholds.json readers skip it already): tomllib refused it as "Invalid
    statement (at line 1, column 1)", which names nothing a person can see in the file."""

    def _read_file(self, file_path) -> dict:
        return tomllib.loads(Path(file_path).read_bytes().removeprefix(codecs.BOM_UTF8).decode("utf-8"))


def load_settings(config: str | Path | None, env_file: str | Path | None = ".env") -> AgentSettings:
    """Settings from a TOML file, the environment, a .env file and systemd credentials.

    The MQTT and OPC UA passwords may come from the credentials 'mqtt_password' and
    'opcua_password' in CREDENTIALS_DIRECTORY (systemd LoadCredential=); an explicitly set
    password (environment, .env, file) wins.
    """
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config file {config} " + ("is a folder, not a file" if Path(config).is_dir()
                                                            else "does not exist"))
    cfg = dict(AgentSettings.model_config, toml_file=Path(config) if config else None)
    cls = type("AgentSettings", (AgentSettings,), {"model_config": cfg})
    env = Path(env_file) if env_file and Path(env_file).is_file() else None
    s = cls(_env_file=env)
    return with_credentials(s, ("mqtt", "opcua"))


def with_credentials(s, tables):
    """`s`, each table's password from credential '<table>_password' in CREDENTIALS_DIRECTORY where none is set."""
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    for table in tables:
        cred = Path(creds) / f"{table}_password" if creds else None
        section = getattr(s, table)
        if section.password is None and cred is not None and cred.is_file():
            secret = SecretStr(cred.read_text().strip())
            s = s.model_copy(update={table: section.model_copy(update={"password": secret})})
    return s


describe_errors = error_lines  # 'path.to.field: reason' for every error (validate-config)
