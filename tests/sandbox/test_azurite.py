"""Azurite stands in for Table storage: the ledger's optimistic concurrency relies on its ETags."""

from __future__ import annotations

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import TableServiceClient, UpdateMode

from tests.support.azurite import Azurite

pytestmark = pytest.mark.azurite


def test_a_stale_etag_loses_the_race_for_an_entity(azurite: Azurite) -> None:
    service = TableServiceClient.from_connection_string(azurite.connection_string)
    table = service.create_table_if_not_exists("leases")
    table.create_entity({"PartitionKey": "gw", "RowKey": "ds", "owner": ""})
    first = table.get_entity("gw", "ds")
    second = table.get_entity("gw", "ds")

    first["owner"] = "instance-a"
    table.update_entity(
        first,
        mode=UpdateMode.MERGE,
        etag=first.metadata["etag"],
        match_condition=MatchConditions.IfNotModified,
    )
    second["owner"] = "instance-b"
    with pytest.raises(ResourceModifiedError):
        table.update_entity(
            second,
            mode=UpdateMode.MERGE,
            etag=second.metadata["etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    assert table.get_entity("gw", "ds")["owner"] == "instance-a"
