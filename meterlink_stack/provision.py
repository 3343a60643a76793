"""Provision MeterLink's data resources from the CloudFormation template itself.

The local stack (moto server) and any account that does not use CloudFormation get the Kinesis
stream, DynamoDB tables and S3 bucket built from `deploy/cloudformation/meterlink.yaml`, so local
and production schemas cannot drift: the template is the only place a key schema, TTL attribute
or lifecycle rule is written down. IoT and IAM resources are skipped; locally the rule bridge
stands in for the IoT rules and moto does not enforce IAM.

Creation is idempotent. An existing resource is kept, but its key schema is compared with the
template and a mismatch is an error, never a silent divergence. Template properties this module
does not know are errors too, so a template change cannot be quietly ignored locally.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import boto3
import yaml
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

_LOG = logging.getLogger(__name__)

# Log event names: one place, so logs and tests speak the same words.
EVENT_CREATED: Final = "provision.created"
EVENT_EXISTS: Final = "provision.exists"
EVENT_SETTING: Final = "provision.setting_applied"
EVENT_SKIPPED: Final = "provision.skipped"
EVENT_DRIFT: Final = "provision.drift"

#: The account id moto reports from STS; used by callers that render without an endpoint.
MOTO_ACCOUNT_ID: Final = "123456789012"

#: Logical ids the rest of MeterLink relies on (see `Provisioned`).
STREAM_ID: Final = "TelemetryStream"
ALERTS_TABLE_ID: Final = "AlertsTable"
DEVICE_STATUS_TABLE_ID: Final = "DeviceStatusTable"
LEASES_TABLE_ID: Final = "LeasesTable"
ARCHIVE_BUCKET_ID: Final = "ArchiveBucket"

STREAM: Final = "AWS::Kinesis::Stream"
TABLE: Final = "AWS::DynamoDB::Table"
BUCKET: Final = "AWS::S3::Bucket"


def _names(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Creating a Kinesis stream or DynamoDB table on AWS takes seconds to a minute; moto is instant.
_ACTIVE_TIMEOUT_S: Final = 300.0
_POLL_FIRST_S: Final = 0.05
_POLL_MAX_S: Final = 2.0

# Properties applied to the local resource, and properties knowingly ignored because they have
# no effect a MeterLink component can observe (tags, metrics, deletion guards). Anything else in
# the template is an error, so a new schema-relevant property cannot be skipped by accident.
_STREAM_APPLIED: Final = frozenset(
    {"Name", "ShardCount", "RetentionPeriodHours", "StreamEncryption", "StreamModeDetails"}
)
_STREAM_IGNORED: Final = frozenset({"Tags", "DesiredShardLevelMetrics"})
_TABLE_APPLIED: Final = _names(
    "TableName KeySchema AttributeDefinitions BillingMode ProvisionedThroughput "
    "GlobalSecondaryIndexes LocalSecondaryIndexes SSESpecification StreamSpecification "
    "TimeToLiveSpecification PointInTimeRecoverySpecification"
)
_TABLE_IGNORED: Final = _names(
    "Tags ContributorInsightsSpecification DeletionProtectionEnabled TableClass "
    "WarmThroughput OnDemandThroughput ResourcePolicy"
)
_BUCKET_APPLIED: Final = _names(
    "BucketName BucketEncryption PublicAccessBlockConfiguration OwnershipControls "
    "VersioningConfiguration LifecycleConfiguration"
)
_BUCKET_IGNORED: Final = _names(
    "Tags LoggingConfiguration MetricsConfigurations AnalyticsConfigurations "
    "InventoryConfigurations IntelligentTieringConfigurations"
)

_SUPPORTED: Final = {
    STREAM: (_STREAM_APPLIED, _STREAM_IGNORED),
    TABLE: (_TABLE_APPLIED, _TABLE_IGNORED),
    BUCKET: (_BUCKET_APPLIED, _BUCKET_IGNORED),
}
_REQUIRED: Final = {
    STREAM_ID: STREAM,
    ALERTS_TABLE_ID: TABLE,
    DEVICE_STATUS_TABLE_ID: TABLE,
    LEASES_TABLE_ID: TABLE,
    ARCHIVE_BUCKET_ID: BUCKET,
}

_RETRIABLE_CODES: Final = _names(
    "ThrottlingException Throttling ProvisionedThroughputExceededException "
    "LimitExceededException RequestLimitExceeded ServiceUnavailable InternalServerError "
    "InternalFailure SlowDown"
)
_RETRIABLE_TRANSPORT: Final = (
    EndpointConnectionError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
)


@dataclass(frozen=True)
class Provisioned:
    """Physical names of the data resources, as built; what the other components are given."""

    stream_name: str
    #: Open shards of the stream as it exists (equals the template's ShardCount unless resharded).
    shard_count: int
    alerts_table: str
    device_status_table: str
    leases_table: str
    archive_bucket: str
    region: str


class ProvisionError(Exception):
    """Provisioning failed; the one-line message names the template and the resource or key."""

    def __init__(self, template: Path, key: str, reason: str, *, retriable: bool = False) -> None:
        self.template = template
        self.key = key
        self.reason = " ".join(reason.split())
        self.retriable = retriable
        super().__init__(f"{template}: {key}: {self.reason}")


# --------------------------------------------------------------------------- template loading


class _TemplateLoader(yaml.SafeLoader):
    """SafeLoader that turns CloudFormation short-form tags into long-form dicts.

    CloudFormation reads `2010-09-09` and similar as strings, so the implicit timestamp
    resolver is removed too.
    """


_TemplateLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_SHORT_FORMS: Final = _names(
    "Ref Condition Base64 Cidr FindInMap GetAtt GetAZs ImportValue Join Select Split Sub "
    "Transform And Equals If Not Or ToJsonString Length"
)


def _construct_short_form(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if suffix not in _SHORT_FORMS:
        raise yaml.constructor.ConstructorError(
            None, None, f"unknown CloudFormation tag !{suffix}", node.start_mark
        )
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        assert isinstance(node, yaml.MappingNode)
        value = loader.construct_mapping(node, deep=True)
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        logical_id, _, attribute = value.partition(".")
        return {"Fn::GetAtt": [logical_id, attribute]}
    return {f"Fn::{suffix}": value}


_TemplateLoader.add_multi_constructor("!", _construct_short_form)


def load_template(path: Path) -> dict[str, Any]:
    """Parse a CloudFormation YAML template; short-form tags become long-form dicts.

    `!Ref X` becomes `{"Ref": "X"}`, `!GetAtt A.B` becomes `{"Fn::GetAtt": ["A", "B"]}` and every
    other `!Name v` becomes `{"Fn::Name": v}`, exactly as CloudFormation reads them.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProvisionError(path, "file", f"cannot read template: {exc.strerror}") from exc
    try:
        document = yaml.load(text, Loader=_TemplateLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise ProvisionError(path, where, f"invalid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ProvisionError(path, "yaml", f"invalid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise ProvisionError(path, "document", "a template must be a YAML mapping")
    if not isinstance(document.get("Resources"), dict) or not document["Resources"]:
        raise ProvisionError(path, "Resources", "missing or empty")
    return document


# --------------------------------------------------------------------------- intrinsics


class _NoValue:
    """`AWS::NoValue`: removes the property or list item it stands in."""


_NO_VALUE: Final = _NoValue()
_SUB_VARIABLE: Final = re.compile(r"\$\{([^}]*)\}")
_NAME_PROPERTY: Final = {STREAM: "Name", TABLE: "TableName", BUCKET: "BucketName"}


def _partition(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


class _Resolver:
    """Evaluates CloudFormation intrinsic functions the data resources use.

    Refs to parameters, pseudo-parameters and to the stream/tables/bucket (their physical names)
    resolve; Refs to resources that only exist in AWS (IAM roles, IoT rules) are errors.
    """

    def __init__(
        self,
        template: Path,
        document: Mapping[str, Any],
        parameters: Mapping[str, str],
        *,
        region: str,
        account_id: Callable[[], str],
    ) -> None:
        self.template = template
        self.document = document
        self.region = region
        self._account_id = account_id
        self._parameter_specs: Mapping[str, Any] = document.get("Parameters") or {}
        self.parameters = _resolve_parameters(template, self._parameter_specs, parameters)
        self._conditions: dict[str, bool] = {}
        self._naming: set[str] = set()

    @property
    def stack_name(self) -> str:
        """`AWS::StackName` locally: the Prefix parameter, which names every resource."""
        return self.parameters.get("Prefix", "meterlink")

    def error(self, key: str, reason: str) -> ProvisionError:
        """Build a ProvisionError about `key` in this template."""
        return ProvisionError(self.template, key, reason)

    def resolve(self, value: Any, key: str) -> Any:
        """Return `value` with every intrinsic function evaluated."""
        if isinstance(value, dict):
            if len(value) == 1:
                ((name, argument),) = value.items()
                if name in ("Ref", "Condition") or name.startswith("Fn::"):
                    return self._intrinsic(name, argument, key)
            resolved = {k: self.resolve(v, f"{key}.{k}") for k, v in value.items()}
            return {k: v for k, v in resolved.items() if v is not _NO_VALUE}
        if isinstance(value, list):
            items = [self.resolve(item, f"{key}[{i}]") for i, item in enumerate(value)]
            return [item for item in items if item is not _NO_VALUE]
        return value

    def condition(self, name: str, key: str) -> bool:
        """Evaluate the named entry of the template's Conditions section (memoised)."""
        if name not in self._conditions:
            conditions = self.document.get("Conditions") or {}
            if name not in conditions:
                raise self.error(key, f"unknown condition {name!r}")
            self._conditions[name] = self._truth(
                self.resolve(conditions[name], f"Conditions.{name}"), f"Conditions.{name}"
            )
        return self._conditions[name]

    def physical_name(self, logical_id: str, key: str) -> str:
        """Return a stream's, table's or bucket's name: its explicit name property, resolved."""
        resources: Mapping[str, Any] = self.document["Resources"]
        resource = resources.get(logical_id)
        if not isinstance(resource, dict):
            raise self.error(key, f"unknown resource or parameter {logical_id!r}")
        kind = resource.get("Type")
        name_property = _NAME_PROPERTY.get(str(kind))
        if name_property is None:
            raise self.error(key, f"{logical_id} is a {kind}, which exists only in AWS")
        if logical_id in self._naming:
            raise self.error(key, f"circular reference through {logical_id}")
        properties = resource.get("Properties") or {}
        if name_property not in properties:
            raise self.error(
                f"Resources.{logical_id}.Properties.{name_property}",
                "needs an explicit name: generated names cannot be reproduced locally",
            )
        self._naming.add(logical_id)
        try:
            name = self.resolve(
                properties[name_property], f"Resources.{logical_id}.Properties.{name_property}"
            )
        finally:
            self._naming.discard(logical_id)
        if not isinstance(name, str) or not name:
            raise self.error(f"Resources.{logical_id}.Properties.{name_property}", "not a string")
        return name

    # -- intrinsic functions ------------------------------------------------------------------

    def _intrinsic(self, name: str, argument: Any, key: str) -> Any:  # noqa: PLR0911, PLR0912
        where = f"{key}.{name}"
        if name == "Ref":
            return self._ref(argument, where)
        if name == "Condition":
            return self.condition(str(argument), where)
        if name == "Fn::Sub":
            return self._sub(argument, where)
        if name == "Fn::GetAtt":
            return self._get_att(argument, where)
        if name == "Fn::If":
            condition, when_true, when_false = self._args(argument, 3, where)
            chosen = when_true if self.condition(str(condition), where) else when_false
            return self.resolve(chosen, where)
        args = self.resolve(argument, where)
        if name == "Fn::Join":
            delimiter, items = self._args(args, 2, where)
            if not isinstance(items, list):
                raise self.error(where, "needs a list to join")
            return str(delimiter).join(_scalar_text(item, where, self) for item in items)
        if name == "Fn::Select":
            index, items = self._args(args, 2, where)
            if not isinstance(items, list):
                raise self.error(where, "needs a list to select from")
            try:
                return items[int(index)]
            except (ValueError, IndexError) as exc:
                raise self.error(where, f"index {index!r} out of range") from exc
        if name == "Fn::Split":
            delimiter, text = self._args(args, 2, where)
            return str(text).split(str(delimiter))
        if name == "Fn::FindInMap":
            map_name, top, second = self._args(args, 3, where)
            try:
                return self.document["Mappings"][map_name][top][second]
            except (KeyError, TypeError) as exc:
                raise self.error(where, f"no mapping {map_name}.{top}.{second}") from exc
        if name == "Fn::Equals":
            left, right = self._args(args, 2, where)
            return str(left) == str(right)
        if name == "Fn::Not":
            (operand,) = self._args(args, 1, where)
            return not self._truth(operand, where)
        if name == "Fn::And":
            return all(self._truth(operand, where) for operand in self._list(args, where))
        if name == "Fn::Or":
            return any(self._truth(operand, where) for operand in self._list(args, where))
        raise self.error(where, "intrinsic function not supported for local provisioning")

    def _ref(self, target: Any, where: str) -> Any:
        if not isinstance(target, str):
            raise self.error(where, "Ref needs a name")
        if target in self.parameters:
            value = self.parameters[target]
            kind = str(self._parameter_specs[target].get("Type", "String"))
            if kind == "CommaDelimitedList" or kind.startswith("List<"):
                return [item.strip() for item in value.split(",")]
            return value
        pseudo: dict[str, Callable[[], str]] = {
            "AWS::Region": lambda: self.region,
            "AWS::AccountId": self._account_id,
            "AWS::StackName": lambda: self.stack_name,
            "AWS::Partition": lambda: _partition(self.region),
            "AWS::URLSuffix": lambda: (
                "amazonaws.com.cn" if self.region.startswith("cn-") else ("amazonaws.com")
            ),
        }
        if target == "AWS::NoValue":
            return _NO_VALUE
        if target in pseudo:
            return pseudo[target]()
        if target.startswith("AWS::"):
            raise self.error(where, f"pseudo parameter {target} not supported locally")
        return self.physical_name(target, where)

    def _get_att(self, argument: Any, where: str) -> str:
        logical_id, attribute = self._args(argument, 2, where)
        resource = (self.document["Resources"]).get(logical_id)
        kind = resource.get("Type") if isinstance(resource, dict) else None
        if attribute != "Arn" or kind not in _NAME_PROPERTY:
            raise self.error(where, f"{logical_id}.{attribute} exists only in AWS")
        name = self.physical_name(str(logical_id), where)
        partition = _partition(self.region)
        if kind == BUCKET:
            return f"arn:{partition}:s3:::{name}"
        service, resource_type = ("kinesis", "stream") if kind == STREAM else ("dynamodb", "table")
        return (
            f"arn:{partition}:{service}:{self.region}:{self._account_id()}:{resource_type}/{name}"
        )

    def _sub(self, argument: Any, where: str) -> str:
        if isinstance(argument, str):
            text, variables = argument, {}
        else:
            text, raw_variables = self._args(argument, 2, where)
            if not isinstance(text, str) or not isinstance(raw_variables, dict):
                raise self.error(where, "Fn::Sub takes a string or [string, {variables}]")
            variables = {k: self.resolve(v, f"{where}.{k}") for k, v in raw_variables.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name.startswith("!"):
                # ${!Literal} is CloudFormation's escape: it renders as ${Literal}.
                return "${" + name[1:] + "}"
            if name in variables:
                return _scalar_text(variables[name], where, self)
            if "." in name and not name.startswith("AWS::"):
                logical_id, _, attribute = name.partition(".")
                return self._get_att([logical_id, attribute], where)
            return _scalar_text(self._ref(name, where), where, self)

        return _SUB_VARIABLE.sub(substitute, text)

    def _truth(self, value: Any, where: str) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise self.error(where, f"expected a boolean, got {value!r}")

    def _args(self, argument: Any, count: int, where: str) -> list[Any]:
        if not isinstance(argument, list) or len(argument) != count:
            raise self.error(where, f"expects a list of {count} arguments")
        return argument

    def _list(self, argument: Any, where: str) -> list[Any]:
        if not isinstance(argument, list):
            raise self.error(where, "expects a list")
        return argument


def _scalar_text(value: Any, where: str, resolver: _Resolver) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise resolver.error(where, f"cannot substitute {value!r} into a string")


def _resolve_parameters(
    template: Path, specs: Mapping[str, Any], overrides: Mapping[str, str]
) -> dict[str, str]:
    """Parameter values (overrides over defaults), validated like CloudFormation does."""
    for name in overrides:
        if name not in specs:
            raise ProvisionError(template, f"Parameters.{name}", "not declared in the template")
    values: dict[str, str] = {}
    for name, spec in specs.items():
        key = f"Parameters.{name}"
        if name in overrides:
            value = str(overrides[name])
        elif "Default" in spec:
            default = spec["Default"]
            value = ("true" if default else "false") if isinstance(default, bool) else str(default)
        else:
            raise ProvisionError(template, key, "has no Default and no value was given")
        _validate_parameter(template, key, spec, value)
        values[name] = value
    return values


def _validate_parameter(template: Path, key: str, spec: Mapping[str, Any], value: str) -> None:
    def fail(reason: str) -> ProvisionError:
        return ProvisionError(template, key, f"value {value!r} {reason}")

    pattern = spec.get("AllowedPattern")
    # CloudFormation requires the pattern to match the whole value.
    if pattern is not None and re.fullmatch(str(pattern), value) is None:
        raise fail(f"does not match AllowedPattern {pattern}")
    allowed = spec.get("AllowedValues")
    if allowed is not None and value not in [str(item) for item in allowed]:
        raise fail(f"is not one of {allowed}")
    if "MinLength" in spec and len(value) < int(spec["MinLength"]):
        raise fail(f"is shorter than MinLength {spec['MinLength']}")
    if "MaxLength" in spec and len(value) > int(spec["MaxLength"]):
        raise fail(f"is longer than MaxLength {spec['MaxLength']}")
    if spec.get("Type") == "Number":
        try:
            number = float(value)
        except ValueError as exc:
            raise fail("is not a number") from exc
        if "MinValue" in spec and number < float(spec["MinValue"]):
            raise fail(f"is below MinValue {spec['MinValue']}")
        if "MaxValue" in spec and number > float(spec["MaxValue"]):
            raise fail(f"is above MaxValue {spec['MaxValue']}")


def resolve_intrinsics(
    value: Any,
    *,
    template: Path,
    document: Mapping[str, Any],
    region: str = "us-east-1",
    account_id: str = MOTO_ACCOUNT_ID,
    parameters: Mapping[str, str] | None = None,
) -> Any:
    """Render `value` from `document` the way CloudFormation would, without touching AWS.

    Useful to check what a policy or rule string becomes after `!Sub` (e.g. that `${!iot:...}`
    renders as the IoT policy variable `${iot:...}`).
    """
    resolver = _Resolver(
        template, document, parameters or {}, region=region, account_id=lambda: account_id
    )
    return resolver.resolve(value, "value")


# --------------------------------------------------------------------------- provisioning


def provision(
    template: Path,
    *,
    endpoint_url: str | None,
    region: str = "us-east-1",
    parameters: Mapping[str, str] | None = None,
    account_id: str | None = None,
    session: boto3.Session | None = None,
) -> Provisioned:
    """Create the template's Kinesis streams, DynamoDB tables and S3 buckets; return their names.

    `endpoint_url` is the local endpoint (moto) or None for the real AWS endpoints. Credentials
    come from `session` (or the default chain). `AWS::AccountId` is `account_id` or, only if the
    template needs it, STS `GetCallerIdentity`; `AWS::StackName` is the Prefix parameter.
    Running it again changes nothing and returns the same result.
    """
    document = load_template(template)
    boto_session = session if session is not None else boto3.Session(region_name=region)
    aws = _Aws(template, boto_session, endpoint_url=endpoint_url, region=region)
    known_account = account_id

    def lookup_account() -> str:
        nonlocal known_account
        if known_account is None:
            identity = aws.call("AWS::AccountId", aws.client("sts").get_caller_identity)
            known_account = str(identity["Account"])
        return known_account

    resolver = _Resolver(
        template, document, parameters or {}, region=region, account_id=lookup_account
    )
    # Resolve and check every data resource before creating any, so that a template mistake
    # leaves nothing half-built.
    planned = _plan(resolver)
    names: dict[str, str] = {}
    shard_count = 0
    for kind, logical_id, properties in planned:
        if kind == STREAM:
            names[logical_id], shards = _provision_stream(aws, resolver, logical_id, properties)
            if logical_id == STREAM_ID:
                shard_count = shards
        elif kind == TABLE:
            names[logical_id] = _provision_table(aws, resolver, logical_id, properties)
        else:
            names[logical_id] = _provision_bucket(aws, resolver, logical_id, properties)
    return Provisioned(
        stream_name=names[STREAM_ID],
        shard_count=shard_count,
        alerts_table=names[ALERTS_TABLE_ID],
        device_status_table=names[DEVICE_STATUS_TABLE_ID],
        leases_table=names[LEASES_TABLE_ID],
        archive_bucket=names[ARCHIVE_BUCKET_ID],
        region=region,
    )


def _plan(resolver: _Resolver) -> list[tuple[str, str, dict[str, Any]]]:
    """Return (type, logical id, resolved properties) of each data resource to provision."""
    planned: list[tuple[str, str, dict[str, Any]]] = []
    for logical_id, resource in resolver.document["Resources"].items():
        key = f"Resources.{logical_id}"
        if not isinstance(resource, dict) or "Type" not in resource:
            raise resolver.error(key, "a resource needs a Type")
        kind = str(resource["Type"])
        if kind not in _SUPPORTED:
            _LOG.debug(
                "%s id=%s type=%s reason=no_local_equivalent", EVENT_SKIPPED, logical_id, kind
            )
            continue
        if "Condition" in resource and not resolver.condition(
            str(resource["Condition"]), f"{key}.Condition"
        ):
            _LOG.debug("%s id=%s type=%s reason=condition_false", EVENT_SKIPPED, logical_id, kind)
            continue
        properties = resolver.resolve(resource.get("Properties") or {}, f"{key}.Properties")
        applied, ignored = _SUPPORTED[kind]
        for name in properties:
            if name not in applied and name not in ignored:
                raise resolver.error(
                    f"{key}.Properties.{name}",
                    "not supported by local provisioning; teach meterlink_stack/provision.py",
                )
        planned.append((kind, logical_id, properties))
    for logical_id, kind in _REQUIRED.items():
        if (kind, logical_id) not in {(k, lid) for k, lid, _ in planned}:
            raise resolver.error(f"Resources.{logical_id}", f"MeterLink needs a {kind} here")

    return planned


class _Aws:
    """boto3 clients for one endpoint, and the one place botocore errors are translated."""

    def __init__(
        self, template: Path, session: boto3.Session, *, endpoint_url: str | None, region: str
    ) -> None:
        self.template = template
        self.region = region
        self._session = session
        self._endpoint_url = endpoint_url
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        """Return a cached client; S3 uses path-style addressing on a custom endpoint."""
        if service not in self._clients:
            config = None
            if service == "s3" and self._endpoint_url is not None:
                config = Config(s3={"addressing_style": "path"})
            try:
                self._clients[service] = self._session.client(
                    service, region_name=self.region, endpoint_url=self._endpoint_url, config=config
                )
            except BotoCoreError as exc:
                raise ProvisionError(
                    self.template, service, f"cannot create client: {exc}"
                ) from exc
        return self._clients[service]

    def call(
        self,
        key: str,
        operation: Callable[..., Any],
        *,
        tolerate: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> Any:
        """Run one API call; error codes in `tolerate` return None, others raise ProvisionError."""
        op = getattr(operation, "__name__", "call")
        try:
            return operation(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "Unknown"))
            if code in tolerate:
                return None
            message = str(exc.response.get("Error", {}).get("Message", ""))
            raise ProvisionError(
                self.template,
                key,
                f"{op} failed: {code}: {message}",
                retriable=code in _RETRIABLE_CODES,
            ) from exc
        except BotoCoreError as exc:
            raise ProvisionError(
                self.template,
                key,
                f"{op} failed: {exc}",
                retriable=isinstance(exc, _RETRIABLE_TRANSPORT),
            ) from exc

    def error_code(
        self, key: str, operation: Callable[..., Any], **kwargs: Any
    ) -> tuple[Any, str | None]:
        """Run one call; return (response, None) or (None, error code) for a ClientError."""
        try:
            return operation(**kwargs), None
        except ClientError as exc:
            return None, str(exc.response.get("Error", {}).get("Code", "Unknown"))
        except BotoCoreError as exc:
            raise ProvisionError(
                self.template,
                key,
                f"{getattr(operation, '__name__', 'call')} failed: {exc}",
                retriable=isinstance(exc, _RETRIABLE_TRANSPORT),
            ) from exc


def _as_int(value: Any, resolver: _Resolver, key: str) -> int:
    if isinstance(value, bool):
        raise resolver.error(key, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise resolver.error(key, f"expected an integer, got {value!r}")


def _as_bool(value: Any, resolver: _Resolver, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise resolver.error(key, f"expected true or false, got {value!r}")


def _as_str(value: Any, resolver: _Resolver, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise resolver.error(key, f"expected a non-empty string, got {value!r}")
    return value


def _wait(resolver: _Resolver, key: str, what: str, poll: Callable[[], tuple[bool, str]]) -> None:
    """Poll until `poll()` says ready; its second value is the status shown on timeout."""
    deadline = time.monotonic() + _ACTIVE_TIMEOUT_S
    delay = _POLL_FIRST_S
    while True:
        ready, status = poll()
        if ready:
            return
        if time.monotonic() >= deadline:
            raise ProvisionError(
                resolver.template,
                key,
                f"{what} still {status} after {_ACTIVE_TIMEOUT_S:.0f}s",
                retriable=True,
            )
        time.sleep(delay)
        delay = min(delay * 2, _POLL_MAX_S)


# -- Kinesis ----------------------------------------------------------------------------------


def _provision_stream(
    aws: _Aws, resolver: _Resolver, logical_id: str, properties: Mapping[str, Any]
) -> tuple[str, int]:
    key = f"Resources.{logical_id}.Properties"
    kinesis = aws.client("kinesis")
    name = _as_str(properties.get("Name"), resolver, f"{key}.Name")
    mode = str((properties.get("StreamModeDetails") or {}).get("StreamMode", "PROVISIONED"))
    args: dict[str, Any] = {"StreamName": name, "StreamModeDetails": {"StreamMode": mode}}
    wanted_shards: int | None = None
    if mode == "PROVISIONED":
        wanted_shards = _as_int(properties.get("ShardCount"), resolver, f"{key}.ShardCount")
        args["ShardCount"] = wanted_shards
    created = (
        aws.call(key, kinesis.create_stream, tolerate=frozenset({"ResourceInUseException"}), **args)
        is not None
    )
    _LOG.info("%s id=%s stream=%s", EVENT_CREATED if created else EVENT_EXISTS, logical_id, name)

    def active() -> dict[str, Any]:
        summary: dict[str, Any] = {}

        def poll() -> tuple[bool, str]:
            nonlocal summary
            response = aws.call(key, kinesis.describe_stream_summary, StreamName=name)
            summary = response["StreamDescriptionSummary"]
            status = str(summary["StreamStatus"])
            if status == "DELETING":
                raise resolver.error(key, f"stream {name} is being deleted")
            return status == "ACTIVE", status

        _wait(resolver, key, f"stream {name}", poll)
        return summary

    summary = active()
    retention = properties.get("RetentionPeriodHours")
    if retention is not None:
        hours = _as_int(retention, resolver, f"{key}.RetentionPeriodHours")
        current = int(summary.get("RetentionPeriodHours", 24))
        if hours != current:
            change = (
                kinesis.increase_stream_retention_period
                if hours > current
                else kinesis.decrease_stream_retention_period
            )
            aws.call(
                f"{key}.RetentionPeriodHours", change, StreamName=name, RetentionPeriodHours=hours
            )
            _LOG.info("%s stream=%s retention_hours=%d", EVENT_SETTING, name, hours)
            summary = active()
    encryption = properties.get("StreamEncryption")
    if encryption is not None:
        encryption_type = _as_str(
            encryption.get("EncryptionType"), resolver, f"{key}.StreamEncryption.EncryptionType"
        )
        key_id = _as_str(encryption.get("KeyId"), resolver, f"{key}.StreamEncryption.KeyId")
        if summary.get("EncryptionType") != encryption_type or summary.get("KeyId") != key_id:
            aws.call(
                f"{key}.StreamEncryption",
                kinesis.start_stream_encryption,
                StreamName=name,
                EncryptionType=encryption_type,
                KeyId=key_id,
            )
            _LOG.info("%s stream=%s encryption=%s", EVENT_SETTING, name, encryption_type)
            summary = active()
    open_shards = int(summary["OpenShardCount"])
    if not created and wanted_shards is not None and open_shards != wanted_shards:
        # Resharding is a legitimate operation on a live stream; report, do not undo it.
        _LOG.warning(
            "%s stream=%s open_shards=%d template_shards=%d",
            EVENT_DRIFT,
            name,
            open_shards,
            wanted_shards,
        )
    return name, open_shards


# -- DynamoDB ---------------------------------------------------------------------------------


_KeyShape = tuple[tuple[str, str, str], ...]


def _key_shape(key_schema: Any, attribute_types: Mapping[str, str]) -> _KeyShape:
    """(name, HASH|RANGE, S|N|B) per key attribute: what must match between template and table."""
    return tuple(
        (
            str(item["AttributeName"]),
            str(item["KeyType"]),
            attribute_types.get(str(item["AttributeName"]), "?"),
        )
        for item in key_schema
    )


def _schema_of(definition: Mapping[str, Any]) -> dict[str, _KeyShape]:
    """Primary key and every secondary index's key, from create_table args or describe_table."""
    types = {
        str(item["AttributeName"]): str(item["AttributeType"])
        for item in definition.get("AttributeDefinitions", [])
    }
    shape = {"table": _key_shape(definition["KeySchema"], types)}
    for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        for index in definition.get(index_kind) or []:
            shape[f"index {index['IndexName']}"] = _key_shape(index["KeySchema"], types)
    return shape


def _format_shape(shape: _KeyShape) -> str:
    return ", ".join(f"{name} {key_type} {attr_type}" for name, key_type, attr_type in shape)


def _provision_table(
    aws: _Aws, resolver: _Resolver, logical_id: str, properties: Mapping[str, Any]
) -> str:
    key = f"Resources.{logical_id}.Properties"
    dynamodb = aws.client("dynamodb")
    name = _as_str(properties.get("TableName"), resolver, f"{key}.TableName")
    args = _create_table_args(resolver, key, name, properties)
    created = (
        aws.call(key, dynamodb.create_table, tolerate=frozenset({"ResourceInUseException"}), **args)
        is not None
    )
    _LOG.info("%s id=%s table=%s", EVENT_CREATED if created else EVENT_EXISTS, logical_id, name)
    if not created:
        existing = aws.call(key, dynamodb.describe_table, TableName=name)["Table"]
        _verify_table_schema(resolver, key, name, args, existing)

    def poll() -> tuple[bool, str]:
        table = aws.call(key, dynamodb.describe_table, TableName=name)["Table"]
        status = str(table["TableStatus"])
        if status == "DELETING":
            raise resolver.error(key, f"table {name} is being deleted")
        return status == "ACTIVE", status

    _wait(resolver, key, f"table {name}", poll)
    _apply_ttl(aws, resolver, key, name, properties.get("TimeToLiveSpecification"))
    _apply_pitr(aws, resolver, key, name, properties.get("PointInTimeRecoverySpecification"))
    return name


def _create_table_args(
    resolver: _Resolver, key: str, name: str, properties: Mapping[str, Any]
) -> dict[str, Any]:
    """Translate the CloudFormation table properties into CreateTable arguments."""
    args: dict[str, Any] = {
        "TableName": name,
        "KeySchema": properties.get("KeySchema"),
        "AttributeDefinitions": properties.get("AttributeDefinitions"),
        "BillingMode": str(properties.get("BillingMode", "PROVISIONED")),
    }
    if not args["KeySchema"] or not args["AttributeDefinitions"]:
        raise resolver.error(key, "KeySchema and AttributeDefinitions are required")
    if "ProvisionedThroughput" in properties:
        throughput = properties["ProvisionedThroughput"]
        args["ProvisionedThroughput"] = {
            unit: _as_int(throughput.get(unit), resolver, f"{key}.ProvisionedThroughput.{unit}")
            for unit in ("ReadCapacityUnits", "WriteCapacityUnits")
        }
    index_keys = ("IndexName", "KeySchema", "Projection", "ProvisionedThroughput")
    for index_kind in ("GlobalSecondaryIndexes", "LocalSecondaryIndexes"):
        if index_kind in properties:
            args[index_kind] = [
                {k: v for k, v in index.items() if k in index_keys}
                for index in properties[index_kind]
            ]
    sse = properties.get("SSESpecification")
    if sse is not None:
        enabled = _as_bool(sse.get("SSEEnabled", False), resolver, f"{key}.SSESpecification")
        api_sse: dict[str, Any] = {"Enabled": enabled}
        if enabled and "SSEType" in sse:
            api_sse["SSEType"] = sse["SSEType"]
        if enabled and "KMSMasterKeyId" in sse:
            api_sse["KMSMasterKeyId"] = sse["KMSMasterKeyId"]
        args["SSESpecification"] = api_sse
    stream = properties.get("StreamSpecification")
    if stream is not None:
        args["StreamSpecification"] = {
            "StreamEnabled": True,
            "StreamViewType": _as_str(
                stream.get("StreamViewType"), resolver, f"{key}.StreamSpecification"
            ),
        }
    return args


def _verify_table_schema(
    resolver: _Resolver, key: str, name: str, wanted: Mapping[str, Any], table: Mapping[str, Any]
) -> None:
    """Require an existing table to have the template's keys: a mismatch is drift."""
    expected = _schema_of(wanted)
    actual = _schema_of(table)
    for part, shape in expected.items():
        if part not in actual:
            raise resolver.error(
                f"{key}.KeySchema",
                f"existing table {name} has no {part} ({_format_shape(shape)}); "
                "delete the table or fix the template",
            )
        if actual[part] != shape:
            raise resolver.error(
                f"{key}.KeySchema",
                f"existing table {name} {part} key is ({_format_shape(actual[part])}), template "
                f"declares ({_format_shape(shape)}); delete the table or fix the template",
            )


def _apply_ttl(aws: _Aws, resolver: _Resolver, key: str, name: str, spec: Any) -> None:
    if spec is None:
        return
    ttl_key = f"{key}.TimeToLiveSpecification"
    if not _as_bool(spec.get("Enabled", False), resolver, f"{ttl_key}.Enabled"):
        return
    attribute = _as_str(spec.get("AttributeName"), resolver, f"{ttl_key}.AttributeName")
    dynamodb = aws.client("dynamodb")
    current = aws.call(ttl_key, dynamodb.describe_time_to_live, TableName=name)
    description = current.get("TimeToLiveDescription", {})
    status = description.get("TimeToLiveStatus")
    if status in ("ENABLED", "ENABLING"):
        if description.get("AttributeName") != attribute:
            raise resolver.error(
                ttl_key,
                f"table {name} already has TTL on {description.get('AttributeName')!r}, "
                f"template declares {attribute!r}",
            )
        return
    aws.call(
        ttl_key,
        dynamodb.update_time_to_live,
        TableName=name,
        TimeToLiveSpecification={"AttributeName": attribute, "Enabled": True},
    )
    _LOG.info("%s table=%s ttl_attribute=%s", EVENT_SETTING, name, attribute)


def _apply_pitr(aws: _Aws, resolver: _Resolver, key: str, name: str, spec: Any) -> None:
    if spec is None:
        return
    pitr_key = f"{key}.PointInTimeRecoverySpecification"
    if not _as_bool(spec.get("PointInTimeRecoveryEnabled", False), resolver, pitr_key):
        return
    dynamodb = aws.client("dynamodb")

    def poll() -> tuple[bool, str]:
        current = aws.call(pitr_key, dynamodb.describe_continuous_backups, TableName=name)
        pitr = current["ContinuousBackupsDescription"].get("PointInTimeRecoveryDescription", {})
        status = str(pitr.get("PointInTimeRecoveryStatus", "DISABLED"))
        if status == "ENABLED":
            return True, status
        # Right after CreateTable, AWS answers ContinuousBackupsUnavailableException for a while.
        _, code = aws.error_code(
            pitr_key,
            dynamodb.update_continuous_backups,
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )
        if code is None:
            _LOG.info("%s table=%s pitr=enabled", EVENT_SETTING, name)
            return True, "ENABLED"
        if code != "ContinuousBackupsUnavailableException":
            raise resolver.error(pitr_key, f"update_continuous_backups failed: {code}")
        return False, code

    _wait(resolver, pitr_key, f"point-in-time recovery of {name}", poll)


# -- S3 ---------------------------------------------------------------------------------------


def _provision_bucket(
    aws: _Aws, resolver: _Resolver, logical_id: str, properties: Mapping[str, Any]
) -> str:
    key = f"Resources.{logical_id}.Properties"
    s3 = aws.client("s3")
    name = _as_str(properties.get("BucketName"), resolver, f"{key}.BucketName")
    # Translate every property before creating anything, so a template error leaves no bucket.
    settings = _bucket_settings(resolver, key, properties)
    _, code = aws.error_code(key, s3.head_bucket, Bucket=name)
    if code is None:
        _LOG.info("%s id=%s bucket=%s", EVENT_EXISTS, logical_id, name)
    elif code in ("404", "NoSuchBucket", "NotFound"):
        location = (
            {}
            if aws.region == "us-east-1"
            else {"CreateBucketConfiguration": {"LocationConstraint": aws.region}}
        )
        created = aws.call(
            key,
            s3.create_bucket,
            tolerate=frozenset({"BucketAlreadyOwnedByYou"}),
            Bucket=name,
            **location,
        )
        _LOG.info(
            "%s id=%s bucket=%s", EVENT_CREATED if created else EVENT_EXISTS, logical_id, name
        )
    else:
        raise resolver.error(
            f"{key}.BucketName", f"bucket {name} is not accessible ({code}): another owner?"
        )
    # Every put_bucket_* call replaces the whole setting, so re-applying is idempotent.
    for setting_key, operation, kwargs in settings:
        aws.call(f"{key}.{setting_key}", getattr(s3, operation), Bucket=name, **kwargs)
        _LOG.debug("%s bucket=%s setting=%s", EVENT_SETTING, name, setting_key)
    return name


def _bucket_settings(
    resolver: _Resolver, key: str, properties: Mapping[str, Any]
) -> list[tuple[str, str, dict[str, Any]]]:
    """(template key, S3 operation, arguments) for each bucket setting in the template."""
    settings: list[tuple[str, str, dict[str, Any]]] = []
    encryption = properties.get("BucketEncryption")
    if encryption is not None:
        rules = []
        for i, rule in enumerate(encryption.get("ServerSideEncryptionConfiguration") or []):
            rule_key = f"{key}.BucketEncryption.ServerSideEncryptionConfiguration[{i}]"
            api_rule: dict[str, Any] = {}
            if "ServerSideEncryptionByDefault" in rule:
                api_rule["ApplyServerSideEncryptionByDefault"] = dict(
                    rule["ServerSideEncryptionByDefault"]
                )
            if "BucketKeyEnabled" in rule:
                api_rule["BucketKeyEnabled"] = _as_bool(
                    rule["BucketKeyEnabled"], resolver, f"{rule_key}.BucketKeyEnabled"
                )
            rules.append(api_rule)
        settings.append(
            (
                "BucketEncryption",
                "put_bucket_encryption",
                {"ServerSideEncryptionConfiguration": {"Rules": rules}},
            )
        )
    block = properties.get("PublicAccessBlockConfiguration")
    if block is not None:
        flags = (
            "BlockPublicAcls",
            "BlockPublicPolicy",
            "IgnorePublicAcls",
            "RestrictPublicBuckets",
        )
        config = {
            flag: _as_bool(
                block.get(flag, False), resolver, f"{key}.PublicAccessBlockConfiguration.{flag}"
            )
            for flag in flags
        }
        settings.append(
            (
                "PublicAccessBlockConfiguration",
                "put_public_access_block",
                {"PublicAccessBlockConfiguration": config},
            )
        )
    ownership = properties.get("OwnershipControls")
    if ownership is not None:
        settings.append(
            (
                "OwnershipControls",
                "put_bucket_ownership_controls",
                {"OwnershipControls": {"Rules": list(ownership.get("Rules") or [])}},
            )
        )
    versioning = properties.get("VersioningConfiguration")
    if versioning is not None:
        settings.append(
            (
                "VersioningConfiguration",
                "put_bucket_versioning",
                {"VersioningConfiguration": {"Status": str(versioning.get("Status"))}},
            )
        )
    lifecycle = properties.get("LifecycleConfiguration")
    if lifecycle is not None:
        rules = [
            _lifecycle_rule(resolver, f"{key}.LifecycleConfiguration.Rules[{i}]", rule)
            for i, rule in enumerate(lifecycle.get("Rules") or [])
        ]
        settings.append(
            (
                "LifecycleConfiguration",
                "put_bucket_lifecycle_configuration",
                {"LifecycleConfiguration": {"Rules": rules}},
            )
        )
    return settings


_LIFECYCLE_KEYS: Final = _names(
    "Id Status Prefix Transitions ExpirationInDays AbortIncompleteMultipartUpload "
    "NoncurrentVersionExpirationInDays NoncurrentVersionExpiration"
)


def _lifecycle_rule(resolver: _Resolver, key: str, rule: Mapping[str, Any]) -> dict[str, Any]:
    """CloudFormation's lifecycle rule shape differs from the S3 API's; translate it."""
    for name in rule:
        if name not in _LIFECYCLE_KEYS:
            raise resolver.error(f"{key}.{name}", "not supported by local provisioning")
    api: dict[str, Any] = {
        "Status": _as_str(rule.get("Status"), resolver, f"{key}.Status"),
        "Filter": {"Prefix": str(rule.get("Prefix", ""))},
    }
    if "Id" in rule:
        api["ID"] = str(rule["Id"])
    if "Transitions" in rule:
        api["Transitions"] = [
            {
                "StorageClass": _as_str(
                    t.get("StorageClass"), resolver, f"{key}.Transitions[{i}].StorageClass"
                ),
                "Days": _as_int(
                    t.get("TransitionInDays"), resolver, f"{key}.Transitions[{i}].TransitionInDays"
                ),
            }
            for i, t in enumerate(rule["Transitions"])
        ]
    if "ExpirationInDays" in rule:
        api["Expiration"] = {
            "Days": _as_int(rule["ExpirationInDays"], resolver, f"{key}.ExpirationInDays")
        }
    if "AbortIncompleteMultipartUpload" in rule:
        days = rule["AbortIncompleteMultipartUpload"].get("DaysAfterInitiation")
        api["AbortIncompleteMultipartUpload"] = {
            "DaysAfterInitiation": _as_int(
                days, resolver, f"{key}.AbortIncompleteMultipartUpload.DaysAfterInitiation"
            )
        }
    noncurrent = rule.get("NoncurrentVersionExpiration") or {}
    if "NoncurrentVersionExpirationInDays" in rule:
        noncurrent = {"NoncurrentDays": rule["NoncurrentVersionExpirationInDays"]}
    if noncurrent:
        api["NoncurrentVersionExpiration"] = {
            "NoncurrentDays": _as_int(
                noncurrent.get("NoncurrentDays"), resolver, f"{key}.NoncurrentVersionExpiration"
            )
        }
    return api
