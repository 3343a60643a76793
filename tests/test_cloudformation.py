"""The CloudFormation template: cfn-lint clean, and the decisions it encodes, checked one by one."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from meterlink_stack.provision import load_template, resolve_intrinsics

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "deploy" / "cloudformation" / "meterlink.yaml"
THING = "${iot:Connection.Thing.ThingName}"
ARN_PREFIX = "arn:aws:iot:us-east-1:123456789012:"
RULE_ERROR_KEY = "rule-errors/${topic(3)}/${timestamp()}-${newuuid()}"

# (role logical id, statement Sid) pairs allowed a "*" resource or action, each because AWS
# offers no narrower form. None are needed today; add one only with a comment in the template.
WILDCARD_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return load_template(TEMPLATE)


def render(doc: dict[str, Any], value: Any) -> Any:
    return resolve_intrinsics(value, template=TEMPLATE, document=doc)


def resources_of(doc: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {lid: r for lid, r in doc["Resources"].items() if r["Type"] == kind}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def cfn_lint_command() -> list[str]:
    beside_python = Path(sys.executable).with_name("cfn-lint")
    found = str(beside_python) if beside_python.exists() else shutil.which("cfn-lint")
    assert found, "cfn-lint is a dev dependency: pip install -e '.[dev]'"
    return [found]


def test_cfn_lint_reports_nothing() -> None:
    result = subprocess.run(
        [*cfn_lint_command(), str(TEMPLATE)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_parameters_and_defaults(doc: dict[str, Any]) -> None:
    params = doc["Parameters"]
    assert params["Prefix"]["Default"] == "meterlink"
    assert params["Prefix"]["AllowedPattern"] == "^[a-z][a-z0-9]{1,19}$"
    assert params["ShardCount"]["Default"] == 4
    assert params["ArchiveTransitionIADays"]["Default"] == 30
    assert params["ArchiveTransitionGlacierDays"]["Default"] == 180


def test_default_physical_names(doc: dict[str, Any]) -> None:
    names = {
        lid: render(doc, resource["Properties"][prop])
        for lid, resource in doc["Resources"].items()
        for prop in ("Name", "TableName", "BucketName", "PolicyName", "RuleName", "RoleName")
        if prop in resource.get("Properties", {})
    }
    assert names == {
        "TelemetryStream": "meterlink-telemetry",
        "AlertsTable": "meterlink-alerts",
        "DeviceStatusTable": "meterlink-device-status",
        "LeasesTable": "meterlink-leases",
        "ArchiveBucket": "meterlink-archive-123456789012-us-east-1",
        "GatewayPolicy": "meterlink-gateway",
        "TelemetryRule": "meterlink_telemetry",
        "EventsRule": "meterlink_events",
        "StatusRule": "meterlink_status",
        "IotRuleRole": "meterlink-iot-rule",
        "ConsumerTaskRole": "meterlink-consumer-task",
    }


def test_stream(doc: dict[str, Any]) -> None:
    props = doc["Resources"]["TelemetryStream"]["Properties"]
    assert props["ShardCount"] == {"Ref": "ShardCount"}
    assert props["RetentionPeriodHours"] == 48
    assert props["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}


# --------------------------------------------------------------------------- IoT rules


@pytest.mark.parametrize(
    ("rule", "topic"), [("TelemetryRule", "telemetry"), ("EventsRule", "events")]
)
def test_stream_rules_forward_payload_keyed_by_gateway(
    doc: dict[str, Any], rule: str, topic: str
) -> None:
    payload = doc["Resources"][rule]["Properties"]["TopicRulePayload"]
    assert payload["Sql"] == f"SELECT * FROM 'dt/meterlink/+/{topic}'"
    assert payload["AwsIotSqlVersion"] == "2016-03-23"
    assert payload["Actions"] == [
        {
            "Kinesis": {
                "StreamName": {"Ref": "TelemetryStream"},
                "PartitionKey": "${topic(3)}",
                "RoleArn": {"Fn::GetAtt": ["IotRuleRole", "Arn"]},
            }
        }
    ]


def test_status_rule_writes_device_status_keyed_by_topic(doc: dict[str, Any]) -> None:
    payload = doc["Resources"]["StatusRule"]["Properties"]["TopicRulePayload"]
    assert render(doc, payload["Sql"]) == (
        "SELECT *, topic(3) AS gateway_id, timestamp() AS received_ms, "
        "floor(timestamp() / 1000) + 30 * 86400 AS expires_at FROM 'dt/meterlink/+/status'"
    )
    assert payload["AwsIotSqlVersion"] == "2016-03-23"
    assert payload["Actions"] == [
        {
            "DynamoDBv2": {
                "PutItem": {"TableName": {"Ref": "DeviceStatusTable"}},
                "RoleArn": {"Fn::GetAtt": ["IotRuleRole", "Arn"]},
            }
        }
    ]


def test_every_rule_has_the_s3_error_action(doc: dict[str, Any]) -> None:
    rules = resources_of(doc, "AWS::IoT::TopicRule")
    assert sorted(rules) == ["EventsRule", "StatusRule", "TelemetryRule"]
    for rule in rules.values():
        assert rule["Properties"]["TopicRulePayload"]["ErrorAction"] == {
            "S3": {
                "BucketName": {"Ref": "ArchiveBucket"},
                "Key": RULE_ERROR_KEY,
                "RoleArn": {"Fn::GetAtt": ["IotRuleRole", "Arn"]},
            }
        }


# --------------------------------------------------------------------------- DynamoDB


def test_every_table_has_pitr_ttl_sse_and_on_demand(doc: dict[str, Any]) -> None:
    tables = resources_of(doc, "AWS::DynamoDB::Table")
    assert sorted(tables) == ["AlertsTable", "DeviceStatusTable", "LeasesTable"]
    for table in tables.values():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
        assert props["SSESpecification"] == {"SSEEnabled": True}


def test_table_keys(doc: dict[str, Any]) -> None:
    res = doc["Resources"]
    alerts = res["AlertsTable"]["Properties"]
    assert alerts["KeySchema"] == [{"AttributeName": "alert_id", "KeyType": "HASH"}]
    assert alerts["AttributeDefinitions"] == [
        {"AttributeName": "alert_id", "AttributeType": "S"},
        {"AttributeName": "meter_id", "AttributeType": "S"},
        {"AttributeName": "opened_ms", "AttributeType": "N"},
    ]
    assert alerts["GlobalSecondaryIndexes"] == [
        {
            "IndexName": "by_meter",
            "KeySchema": [
                {"AttributeName": "meter_id", "KeyType": "HASH"},
                {"AttributeName": "opened_ms", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ]
    for lid, pk in (("DeviceStatusTable", "gateway_id"), ("LeasesTable", "lease_key")):
        props = res[lid]["Properties"]
        assert props["KeySchema"] == [{"AttributeName": pk, "KeyType": "HASH"}]
        assert props["AttributeDefinitions"] == [{"AttributeName": pk, "AttributeType": "S"}]


# --------------------------------------------------------------------------- S3


def test_bucket_is_private_encrypted_and_tiered(doc: dict[str, Any]) -> None:
    props = render(doc, doc["Resources"]["ArchiveBucket"]["Properties"])
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert props["BucketEncryption"] == {
        "ServerSideEncryptionConfiguration": [
            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
        ]
    }
    assert props["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    assert props["LifecycleConfiguration"]["Rules"] == [
        {
            "Id": "archive-tiering",
            "Status": "Enabled",
            "Prefix": "archive/",
            "Transitions": [
                {"StorageClass": "STANDARD_IA", "TransitionInDays": "30"},
                {"StorageClass": "GLACIER_IR", "TransitionInDays": "180"},
            ],
        },
        {
            "Id": "quarantine-expiry",
            "Status": "Enabled",
            "Prefix": "quarantine/",
            "ExpirationInDays": "90",
        },
        {
            "Id": "rule-errors-expiry",
            "Status": "Enabled",
            "Prefix": "rule-errors/",
            "ExpirationInDays": "90",
        },
        {
            "Id": "abort-incomplete-multipart",
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
        },
    ]


def test_bucket_policy_denies_plain_http(doc: dict[str, Any]) -> None:
    policy = render(doc, doc["Resources"]["ArchiveBucketPolicy"]["Properties"])
    bucket_arn = "arn:aws:s3:::meterlink-archive-123456789012-us-east-1"
    assert policy["Bucket"] == "meterlink-archive-123456789012-us-east-1"
    assert policy["PolicyDocument"]["Statement"] == [
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }
    ]


# --------------------------------------------------------------------------- IAM


def iam_statements(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for lid, role in resources_of(doc, "AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            found += [(lid, st) for st in policy["PolicyDocument"]["Statement"]]
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for lid, res in resources_of(doc, kind).items():
            found += [(lid, st) for st in res["Properties"]["PolicyDocument"]["Statement"]]
    return found


def test_no_wildcard_actions_or_resources(doc: dict[str, Any]) -> None:
    statements = iam_statements(doc)
    assert len(statements) == 8
    offenders = []
    for lid, statement in statements:
        actions = as_list(statement["Action"])
        resources = as_list(statement.get("Resource", []))
        wildcard = "*" in resources or any(a == "*" or a.endswith(":*") for a in actions)
        if wildcard and (lid, statement.get("Sid", "")) not in WILDCARD_EXCEPTIONS:
            offenders.append((lid, statement.get("Sid")))
        assert statement["Effect"] == "Allow"
    assert offenders == []


def test_roles_trust_one_service_from_this_account(doc: dict[str, Any]) -> None:
    trust = {
        lid: render(doc, role["Properties"]["AssumeRolePolicyDocument"])["Statement"]
        for lid, role in resources_of(doc, "AWS::IAM::Role").items()
    }
    assert trust == {
        "IotRuleRole": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "iot.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": "123456789012"},
                    "ArnLike": {"aws:SourceArn": f"{ARN_PREFIX}rule/meterlink_*"},
                },
            }
        ],
        "ConsumerTaskRole": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {
                    "StringEquals": {"aws:SourceAccount": "123456789012"},
                    "ArnLike": {"aws:SourceArn": "arn:aws:ecs:us-east-1:123456789012:*"},
                },
            }
        ],
    }


def grants(doc: dict[str, Any], role: str) -> dict[str, tuple[list[str], list[str]]]:
    """Sid -> (actions, rendered resources) of a role's inline policies."""
    out = {}
    for policy in doc["Resources"][role]["Properties"]["Policies"]:
        for st in render(doc, policy["PolicyDocument"])["Statement"]:
            out[st["Sid"]] = (as_list(st["Action"]), as_list(st["Resource"]))
    return out


STREAM_ARN = "arn:aws:kinesis:us-east-1:123456789012:stream/meterlink-telemetry"
TABLE_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/meterlink-"
BUCKET_ARN = "arn:aws:s3:::meterlink-archive-123456789012-us-east-1"


def test_iot_rule_role_can_only_write_its_three_targets(doc: dict[str, Any]) -> None:
    assert grants(doc, "IotRuleRole") == {
        "PutTelemetry": (["kinesis:PutRecord"], [STREAM_ARN]),
        "PutDeviceStatus": (["dynamodb:PutItem"], [f"{TABLE_ARN}device-status"]),
        "WriteRuleErrors": (["s3:PutObject"], [f"{BUCKET_ARN}/rule-errors/*"]),
    }


def test_consumer_role_grants(doc: dict[str, Any]) -> None:
    assert grants(doc, "ConsumerTaskRole") == {
        "ReadTelemetry": (
            [
                "kinesis:DescribeStream",
                "kinesis:DescribeStreamSummary",
                "kinesis:GetRecords",
                "kinesis:GetShardIterator",
                "kinesis:ListShards",
            ],
            [STREAM_ARN],
        ),
        "ReadWriteTables": (
            [
                "dynamodb:BatchWriteItem",
                "dynamodb:ConditionCheckItem",
                "dynamodb:DeleteItem",
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:Query",
                "dynamodb:UpdateItem",
            ],
            [
                f"{TABLE_ARN}alerts",
                f"{TABLE_ARN}alerts/index/*",
                f"{TABLE_ARN}device-status",
                f"{TABLE_ARN}leases",
            ],
        ),
        "ListLeases": (["dynamodb:Scan"], [f"{TABLE_ARN}leases"]),
        "ReadWriteArchive": (
            ["s3:GetObject", "s3:PutObject"],
            [f"{BUCKET_ARN}/archive/*", f"{BUCKET_ARN}/quarantine/*"],
        ),
        "ListArchive": (["s3:ListBucket"], [BUCKET_ARN]),
    }
    statement = next(
        st
        for st in doc["Resources"]["ConsumerTaskRole"]["Properties"]["Policies"][0][
            "PolicyDocument"
        ]["Statement"]
        if st["Sid"] == "ListArchive"
    )
    assert statement["Condition"] == {"StringLike": {"s3:prefix": ["archive/*", "quarantine/*"]}}


# --------------------------------------------------------------------------- IoT policy


def test_gateway_policy_binds_every_permission_to_the_own_thing(doc: dict[str, Any]) -> None:
    raw = doc["Resources"]["GatewayPolicy"]["Properties"]["PolicyDocument"]
    policy = render(doc, raw)
    by_sid = {st["Sid"]: st for st in policy["Statement"]}
    own = f"{ARN_PREFIX}topic/dt/meterlink/{THING}"
    assert by_sid["ConnectAsOwnThing"] == {
        "Sid": "ConnectAsOwnThing",
        "Effect": "Allow",
        "Action": "iot:Connect",
        "Resource": f"{ARN_PREFIX}client/{THING}",
        "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
    }
    assert by_sid["PublishOwnTopics"]["Action"] == "iot:Publish"
    assert by_sid["PublishOwnTopics"]["Resource"] == [
        f"{own}/telemetry",
        f"{own}/events",
        f"{own}/status",
    ]
    assert by_sid["RetainOwnStatus"]["Action"] == "iot:RetainPublish"
    assert by_sid["RetainOwnStatus"]["Resource"] == f"{own}/status"
    assert by_sid["SubscribeOwnCommands"]["Action"] == "iot:Subscribe"
    assert by_sid["SubscribeOwnCommands"]["Resource"] == (
        f"{ARN_PREFIX}topicfilter/dt/meterlink/{THING}/cmd/*"
    )
    assert by_sid["ReceiveOwnCommands"]["Action"] == "iot:Receive"
    assert by_sid["ReceiveOwnCommands"]["Resource"] == f"{own}/cmd/*"
    assert len(by_sid) == 5
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in as_list(statement["Resource"]):
            assert THING in resource
            assert "${!" not in resource


def test_gateway_policy_uses_the_sub_escape(doc: dict[str, Any]) -> None:
    publish = doc["Resources"]["GatewayPolicy"]["Properties"]["PolicyDocument"]["Statement"][1]
    for resource in publish["Resource"]:
        assert "${!iot:Connection.Thing.ThingName}" in resource["Fn::Sub"]


def test_outputs(doc: dict[str, Any]) -> None:
    assert sorted(doc["Outputs"]) == [
        "AlertsTableName",
        "ArchiveBucketName",
        "ConsumerTaskRoleArn",
        "DeviceStatusTableName",
        "GatewayPolicyName",
        "IotDataEndpoint",
        "LeasesTableName",
        "StreamArn",
        "StreamName",
    ]
    assert "describe-endpoint --endpoint-type iot:Data-ATS" in render(
        doc, doc["Outputs"]["IotDataEndpoint"]["Value"]
    )
