"""provision(): the stream, tables and bucket built from the CloudFormation template on moto.

Every test uses its own Prefix (or region) because the moto server is shared by the session.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError

from meterlink_stack.provision import (
    Provisioned,
    ProvisionError,
    load_template,
    provision,
    resolve_intrinsics,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = REPO_ROOT / "deploy" / "cloudformation" / "meterlink.yaml"
ACCOUNT = "123456789012"

pytestmark = pytest.mark.integration


@pytest.fixture
def session() -> boto3.Session:
    return boto3.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix(stem: str = "t") -> str:
    return f"{stem}{uuid.uuid4().hex[:10]}"


def clients(session: boto3.Session, endpoint: str, region: str = "us-east-1") -> Any:
    def make(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint, region_name=region)

    return make("kinesis"), make("dynamodb"), make("s3")


def expected(prefix: str, region: str = "us-east-1") -> Provisioned:
    return Provisioned(
        stream_name=f"{prefix}-telemetry",
        shard_count=4,
        alerts_table=f"{prefix}-alerts",
        device_status_table=f"{prefix}-device-status",
        leases_table=f"{prefix}-leases",
        archive_bucket=f"{prefix}-archive-{ACCOUNT}-{region}",
        region=region,
    )


# --------------------------------------------------------------------------- against moto


def test_defaults_build_the_meterlink_resources(moto_endpoint: str, session: boto3.Session) -> None:
    # The default Prefix, in a region no other test uses, so the names are the documented ones.
    region = "eu-north-1"
    result = provision(TEMPLATE, endpoint_url=moto_endpoint, region=region, session=session)
    assert result == Provisioned(
        stream_name="meterlink-telemetry",
        shard_count=4,
        alerts_table="meterlink-alerts",
        device_status_table="meterlink-device-status",
        leases_table="meterlink-leases",
        archive_bucket=f"meterlink-archive-{ACCOUNT}-eu-north-1",
        region="eu-north-1",
    )
    kinesis, dynamodb, s3 = clients(session, moto_endpoint, region)
    summary = kinesis.describe_stream_summary(StreamName="meterlink-telemetry")
    assert summary["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE"
    assert summary["StreamDescriptionSummary"]["OpenShardCount"] == 4
    assert dynamodb.describe_table(TableName="meterlink-alerts")["Table"]["TableStatus"] == "ACTIVE"
    location = s3.get_bucket_location(Bucket=result.archive_bucket)["LocationConstraint"]
    assert location == "eu-north-1"


def test_provision_builds_everything_the_template_declares(
    moto_endpoint: str, session: boto3.Session
) -> None:
    prefix = unique_prefix()
    result = provision(
        TEMPLATE, endpoint_url=moto_endpoint, parameters={"Prefix": prefix}, session=session
    )
    assert result == expected(prefix)
    kinesis, dynamodb, s3 = clients(session, moto_endpoint)

    stream = kinesis.describe_stream_summary(StreamName=result.stream_name)
    stream = stream["StreamDescriptionSummary"]
    assert (stream["StreamStatus"], stream["OpenShardCount"]) == ("ACTIVE", 4)
    assert stream["RetentionPeriodHours"] == 48
    assert (stream["EncryptionType"], stream["KeyId"]) == ("KMS", "alias/aws/kinesis")
    assert len(kinesis.list_shards(StreamName=result.stream_name)["Shards"]) == 4

    alerts = dynamodb.describe_table(TableName=result.alerts_table)["Table"]
    assert alerts["KeySchema"] == [{"AttributeName": "alert_id", "KeyType": "HASH"}]
    assert sorted(alerts["AttributeDefinitions"], key=lambda a: a["AttributeName"]) == [
        {"AttributeName": "alert_id", "AttributeType": "S"},
        {"AttributeName": "meter_id", "AttributeType": "S"},
        {"AttributeName": "opened_ms", "AttributeType": "N"},
    ]
    assert [(gsi["IndexName"], gsi["KeySchema"]) for gsi in alerts["GlobalSecondaryIndexes"]] == [
        (
            "by_meter",
            [
                {"AttributeName": "meter_id", "KeyType": "HASH"},
                {"AttributeName": "opened_ms", "KeyType": "RANGE"},
            ],
        )
    ]
    assert alerts["GlobalSecondaryIndexes"][0]["Projection"] == {"ProjectionType": "ALL"}
    for table, pk in (
        (result.device_status_table, "gateway_id"),
        (result.leases_table, "lease_key"),
    ):
        described = dynamodb.describe_table(TableName=table)["Table"]
        assert described["KeySchema"] == [{"AttributeName": pk, "KeyType": "HASH"}]
        assert described["AttributeDefinitions"] == [{"AttributeName": pk, "AttributeType": "S"}]
        assert "GlobalSecondaryIndexes" not in described or not described["GlobalSecondaryIndexes"]
    for table in (result.alerts_table, result.device_status_table, result.leases_table):
        described = dynamodb.describe_table(TableName=table)["Table"]
        assert described["TableStatus"] == "ACTIVE"
        assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert described["SSEDescription"]["Status"] == "ENABLED"
        assert dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"] == {
            "TimeToLiveStatus": "ENABLED",
            "AttributeName": "expires_at",
        }
        backups = dynamodb.describe_continuous_backups(TableName=table)
        pitr = backups["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]
        assert pitr["PointInTimeRecoveryStatus"] == "ENABLED"

    bucket = result.archive_bucket
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    rules = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert [r["ApplyServerSideEncryptionByDefault"] for r in rules] == [{"SSEAlgorithm": "AES256"}]
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]
    assert ownership == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert sorted(lifecycle, key=lambda r: r["ID"]) == [
        {
            "ID": "abort-incomplete-multipart",
            "Filter": {"Prefix": ""},
            "Status": "Enabled",
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7},
        },
        {
            "ID": "archive-tiering",
            "Filter": {"Prefix": "archive/"},
            "Status": "Enabled",
            "Transitions": [
                {"Days": 30, "StorageClass": "STANDARD_IA"},
                {"Days": 180, "StorageClass": "GLACIER_IR"},
            ],
        },
        {
            "ID": "quarantine-expiry",
            "Filter": {"Prefix": "quarantine/"},
            "Status": "Enabled",
            "Expiration": {"Days": 90},
        },
        {
            "ID": "rule-errors-expiry",
            "Filter": {"Prefix": "rule-errors/"},
            "Status": "Enabled",
            "Expiration": {"Days": 90},
        },
    ]


def test_second_run_is_a_noop(moto_endpoint: str, session: boto3.Session) -> None:
    prefix = unique_prefix()
    params = {"Prefix": prefix}
    first = provision(TEMPLATE, endpoint_url=moto_endpoint, parameters=params, session=session)
    kinesis, dynamodb, s3 = clients(session, moto_endpoint)
    kinesis.put_record(StreamName=first.stream_name, Data=b"batch", PartitionKey="gw-1")
    dynamodb.put_item(TableName=first.alerts_table, Item={"alert_id": {"S": "ep-1"}})
    s3.put_object(Bucket=first.archive_bucket, Key="archive/x.parquet", Body=b"PAR1")
    created = kinesis.describe_stream_summary(StreamName=first.stream_name)[
        "StreamDescriptionSummary"
    ]["StreamCreationTimestamp"]

    second = provision(TEMPLATE, endpoint_url=moto_endpoint, parameters=params, session=session)

    assert second == first
    summary = kinesis.describe_stream_summary(StreamName=first.stream_name)
    assert summary["StreamDescriptionSummary"]["StreamCreationTimestamp"] == created
    shard = kinesis.list_shards(StreamName=first.stream_name)["Shards"]
    records = sum(
        len(
            kinesis.get_records(
                ShardIterator=kinesis.get_shard_iterator(
                    StreamName=first.stream_name,
                    ShardId=s["ShardId"],
                    ShardIteratorType="TRIM_HORIZON",
                )["ShardIterator"]
            )["Records"]
        )
        for s in shard
    )
    assert records == 1
    item = dynamodb.get_item(TableName=first.alerts_table, Key={"alert_id": {"S": "ep-1"}})
    assert item["Item"] == {"alert_id": {"S": "ep-1"}}
    assert s3.get_object(Bucket=first.archive_bucket, Key="archive/x.parquet")["Body"].read() == (
        b"PAR1"
    )


def test_prefix_override_creates_separate_resources(
    moto_endpoint: str, session: boto3.Session
) -> None:
    base, other = unique_prefix("mlt1"), unique_prefix("mlt2")
    first = provision(
        TEMPLATE, endpoint_url=moto_endpoint, parameters={"Prefix": base}, session=session
    )
    second = provision(
        TEMPLATE,
        endpoint_url=moto_endpoint,
        parameters={"Prefix": other, "ShardCount": "2"},
        session=session,
    )
    assert first == expected(base)
    assert second == replace(expected(other), shard_count=2)
    kinesis, dynamodb, s3 = clients(session, moto_endpoint)
    for result, shards in ((first, 4), (second, 2)):
        summary = kinesis.describe_stream_summary(StreamName=result.stream_name)
        assert summary["StreamDescriptionSummary"]["OpenShardCount"] == shards
        for table in (result.alerts_table, result.device_status_table, result.leases_table):
            assert dynamodb.describe_table(TableName=table)["Table"]["TableStatus"] == "ACTIVE"
        s3.head_bucket(Bucket=result.archive_bucket)


def test_existing_table_with_other_key_schema_is_an_error(
    moto_endpoint: str, session: boto3.Session
) -> None:
    prefix = unique_prefix()
    _, dynamodb, _ = clients(session, moto_endpoint)
    dynamodb.create_table(
        TableName=f"{prefix}-alerts",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ProvisionError) as caught:
        provision(
            TEMPLATE, endpoint_url=moto_endpoint, parameters={"Prefix": prefix}, session=session
        )
    assert caught.value.key == "Resources.AlertsTable.Properties.KeySchema"
    assert str(caught.value) == (
        f"{TEMPLATE}: Resources.AlertsTable.Properties.KeySchema: existing table "
        f"{prefix}-alerts table key is (id HASH S), template declares (alert_id HASH S); "
        "delete the table or fix the template"
    )


def test_existing_table_without_the_index_is_an_error(
    moto_endpoint: str, session: boto3.Session
) -> None:
    prefix = unique_prefix()
    _, dynamodb, _ = clients(session, moto_endpoint)
    dynamodb.create_table(
        TableName=f"{prefix}-alerts",
        KeySchema=[{"AttributeName": "alert_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "alert_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(ProvisionError, match=r"has no index by_meter \(meter_id HASH S, opened"):
        provision(
            TEMPLATE, endpoint_url=moto_endpoint, parameters={"Prefix": prefix}, session=session
        )


def test_invalid_prefix_fails_before_any_call(moto_endpoint: str, session: boto3.Session) -> None:
    with pytest.raises(ProvisionError) as caught:
        provision(
            TEMPLATE, endpoint_url=moto_endpoint, parameters={"Prefix": "Bad-Name"}, session=session
        )
    assert str(caught.value) == (
        f"{TEMPLATE}: Parameters.Prefix: value 'Bad-Name' does not match AllowedPattern "
        "^[a-z][a-z0-9]{1,19}$"
    )
    kinesis, _, _ = clients(session, moto_endpoint)
    assert "Bad-Name-telemetry" not in kinesis.list_streams(Limit=10000)["StreamNames"]


def test_unknown_parameter_is_an_error(moto_endpoint: str, session: boto3.Session) -> None:
    with pytest.raises(ProvisionError, match=r"Parameters\.Shards: not declared in the template"):
        provision(TEMPLATE, endpoint_url=moto_endpoint, parameters={"Shards": "2"}, session=session)


def test_unreachable_endpoint_is_a_retriable_error(session: boto3.Session) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ProvisionError) as caught:
        provision(
            TEMPLATE,
            endpoint_url=endpoint,
            parameters={"Prefix": unique_prefix()},
            account_id=ACCOUNT,
            session=session,
        )
    assert caught.value.retriable is True
    assert caught.value.key == "Resources.TelemetryStream.Properties"
    assert isinstance(caught.value.__cause__, EndpointConnectionError)


def test_unsupported_property_fails_before_anything_is_created(
    moto_endpoint: str, session: boto3.Session, tmp_path: Path
) -> None:
    # The bucket comes last in the template; the stream and tables before it must not be built.
    text = TEMPLATE.read_text(encoding="utf-8")
    assert text.count("      OwnershipControls:\n") == 1
    text = text.replace(
        "      OwnershipControls:\n",
        "      NotificationConfiguration: {}\n      OwnershipControls:\n",
    )
    template = tmp_path / "changed.yaml"
    template.write_text(text, encoding="utf-8")
    prefix = unique_prefix()
    with pytest.raises(ProvisionError) as caught:
        provision(
            template, endpoint_url=moto_endpoint, parameters={"Prefix": prefix}, session=session
        )
    assert str(caught.value) == (
        f"{template}: Resources.ArchiveBucket.Properties.NotificationConfiguration: not supported "
        "by local provisioning; teach meterlink_stack/provision.py"
    )
    kinesis, dynamodb, _ = clients(session, moto_endpoint)
    assert f"{prefix}-telemetry" not in kinesis.list_streams(Limit=10000)["StreamNames"]
    assert f"{prefix}-alerts" not in dynamodb.list_tables(Limit=100)["TableNames"]


# --------------------------------------------------------------------------- pure logic


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_short_form_tags_become_long_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
AWSTemplateFormatVersion: 2010-09-09
Conditions:
  IsProd: !Equals [!Ref Env, prod]
Resources:
  R:
    Type: AWS::Kinesis::Stream
    Properties:
      A: !Ref Env
      B: !GetAtt Thing.Endpoint.Address
      C: !Sub "${Env}-x"
      D: !Sub ["${X}", {X: !Ref Env}]
      E: !Join ["-", [a, !Ref Env]]
      F: !If [IsProd, 1, !Ref AWS::NoValue]
      G: !Select [0, !Split [",", "a,b"]]
      H: !GetAtt [Thing, Arn]
""",
    )
    doc = load_template(path)
    assert doc["AWSTemplateFormatVersion"] == "2010-09-09"
    assert doc["Conditions"] == {"IsProd": {"Fn::Equals": [{"Ref": "Env"}, "prod"]}}
    assert doc["Resources"]["R"]["Properties"] == {
        "A": {"Ref": "Env"},
        "B": {"Fn::GetAtt": ["Thing", "Endpoint.Address"]},
        "C": {"Fn::Sub": "${Env}-x"},
        "D": {"Fn::Sub": ["${X}", {"X": {"Ref": "Env"}}]},
        "E": {"Fn::Join": ["-", ["a", {"Ref": "Env"}]]},
        "F": {"Fn::If": ["IsProd", 1, {"Ref": "AWS::NoValue"}]},
        "G": {"Fn::Select": [0, {"Fn::Split": [",", "a,b"]}]},
        "H": {"Fn::GetAtt": ["Thing", "Arn"]},
    }


def test_unknown_tag_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "Resources:\n  R:\n    Type: !Bogus x\n")
    with pytest.raises(ProvisionError) as caught:
        load_template(path)
    assert str(caught.value) == f"{path}: line 3: invalid YAML: unknown CloudFormation tag !Bogus"


def test_missing_template_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ProvisionError) as caught:
        load_template(path)
    assert str(caught.value) == f"{path}: file: cannot read template: No such file or directory"


def test_intrinsics_render_like_cloudformation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
Parameters:
  Env: {Type: String, Default: dev, AllowedValues: [dev, prod]}
  Size: {Type: Number, Default: 3, MinValue: 1}
Conditions:
  IsProd: !Equals [!Ref Env, prod]
Resources:
  Stream:
    Type: AWS::Kinesis::Stream
    Properties: {Name: !Sub "${Env}-s"}
""",
    )
    doc = load_template(path)

    def render(value: Any, **params: str) -> Any:
        return resolve_intrinsics(value, template=path, document=doc, parameters=params)

    value = {
        "sub": {"Fn::Sub": "${AWS::StackName}/${Env}/${!Literal}/${Stream}/${Stream.Arn}"},
        "join": {"Fn::Join": [":", [{"Ref": "Size"}, {"Ref": "AWS::Region"}]]},
        "if": {"Fn::If": ["IsProd", "big", {"Ref": "AWS::NoValue"}]},
        "list": ["a", {"Fn::If": ["IsProd", "b", {"Ref": "AWS::NoValue"}]}],
        "select": {"Fn::Select": [1, {"Fn::Split": [",", "x,y,z"]}]},
    }
    arn = f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/dev-s"
    assert render(value) == {
        "sub": f"meterlink/dev/${{Literal}}/dev-s/{arn}",
        "join": "3:us-east-1",
        "list": ["a"],
        "select": "y",
    }
    assert render(value, Env="prod")["if"] == "big"
    with pytest.raises(ProvisionError, match=r"Parameters\.Env: value 'qa' is not one of"):
        render(value, Env="qa")
    with pytest.raises(ProvisionError, match=r"Parameters\.Size: value '0' is below MinValue 1"):
        render(value, Size="0")
