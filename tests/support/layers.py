"""Which tests check a stand-in rather than the product.

The suite proves the product against stand-ins: the sandbox (its HTTPS server, the Entra ID, Key
Vault, Power BI, Fabric and Application Insights stand-ins, its gateway decryptor and its source
accounts), the spec validator and Azurite. Some tests check those stand-ins themselves: that the
sandbox is as strict as the real services, so that a product test passing against it means
something. They are worth having, and counted apart: ``tests/conftest.py`` marks them
``standin`` (with the tests of the suite's own support code), so

    pytest -m standin            # only the stand-ins' own tests
    pytest -m "not standin"      # only the product's
    pytest --collect-only -q -m standin | tail -1   # how many

A whole file is listed when every test in it checks a stand-in; otherwise the test functions are
named (every parametrized case of one counts). ``tests/unit/test_support_layers.py`` checks that
each listed file and function still exists. A new test of a stand-in belongs here.
"""

from __future__ import annotations

#: Files whose every test checks a stand-in (or the suite's own support code).
STANDIN_FILES = frozenset(
    {
        "tests/sandbox/test_server.py",  # the HTTPS server: TLS, recording, faults, error shapes
        "tests/sandbox/test_entra.py",  # Entra ID stand-in, with the real msal and azure-identity
        "tests/sandbox/test_keyvault.py",  # Key Vault stand-in, with the real azure-keyvault-secrets
        "tests/sandbox/test_powerbi.py",  # Power BI stand-in against the swagger
        "tests/sandbox/test_appinsights.py",  # ingestion stand-in, with the real exporter
        "tests/sandbox/test_accounts.py",  # source accounts counting failed sign-ins like a DC
        "tests/sandbox/test_azurite.py",  # Azurite's ETags, which the ledger relies on
        "tests/sandbox/test_fabric_reference_standin.py",  # Fabric's Key Vault references, resolved
        "tests/unit/test_specs.py",  # the spec validator and the vendored specs
        "tests/unit/test_support_ports.py",  # the suite's port-443 rule
        "tests/unit/test_support_leftovers.py",  # the suite's no-leftover-telemetry rule
        "tests/unit/test_support_layers.py",  # this list
        "tests/unit/test_support_mutation_order.py",  # make mutate's test order
        "tests/unit/test_support_mutation_pragmas.py",  # make mutate's equivalent lines, listed
    }
)

#: Test functions that check a stand-in, in files that otherwise test the product.
STANDIN_TESTS: dict[str, frozenset[str]] = {
    # The gateway side (sandbox.gateway_keys): its keys, and a decryptor that refuses tampering.
    "tests/unit/test_gateway_crypto.py": frozenset(
        {
            "test_public_key_json_looks_like_the_power_bi_api",
            "test_generate_reuses_keys_only_when_asked",
            "test_generate_refuses_sizes_no_gateway_uses",
            "test_gateway_decrypts_a_hybrid_ciphertext_built_by_hand",
            "test_segmented_single_bit_flip_is_refused",
            "test_hybrid_single_bit_flip_in_any_region_is_refused",
            "test_another_gateway_of_the_same_size_cannot_decrypt",
            "test_truncated_output_is_refused",
            "test_hybrid_rsa_part_alone_is_refused",
            "test_hybrid_blob_missing_its_last_aes_block_is_refused",
            "test_hybrid_halves_swapped_are_refused",
            "test_segmented_full_blocks_reordered_decrypt_to_reordered_text",
            "test_segmented_short_last_block_moved_forward_is_refused",
            "test_segmented_dropping_whole_trailing_blocks_yields_a_truncated_plaintext",
            "test_segmented_segments_longer_than_85_bytes_are_refused",
            "test_segmented_empty_segment_is_refused",
            "test_hybrid_key_blob_with_wrong_header_is_refused",
            "test_hybrid_key_blob_of_the_wrong_length_is_refused",
            "test_hybrid_blob_with_wrong_header_is_refused_even_with_a_valid_tag",
            "test_hybrid_bad_pkcs7_padding_is_refused_even_with_a_valid_tag",
            "test_plaintext_that_is_not_utf8_is_refused_without_leaking_it",
            "test_malformed_input_is_refused",
        }
    ),
    # The sandbox's rate limit (the rest of the file is the pipeline's adaptive concurrency).
    "tests/sandbox/test_throttling.py": frozenset(
        {
            "test_over_the_rate_the_sandbox_answers_429_with_retry_after_in_the_service_shape",
            "test_retry_after_is_the_time_to_the_next_token_at_least_the_configured_seconds",
            "test_rate_limit_arguments_are_checked",
        }
    ),
    "tests/sandbox/test_scanner.py": frozenset({"test_the_sandbox_scanner_is_as_strict_as_the_swagger"}),
    "tests/sandbox/test_fabric.py": frozenset({"test_the_sandbox_answers_match_the_fabric_specs"}),
    "tests/sandbox/test_fabric_refresh.py": frozenset(
        {"test_the_sandbox_answers_list_item_connections_and_paged_lists_as_the_spec_says"}
    ),
    "tests/sandbox/test_privacy_guard.py": frozenset(
        {"test_the_sandbox_shows_gateway_data_sources_as_connections_consistently"}
    ),
    # The sandbox's Fabric job events (sandbox.job_events): shaped as Microsoft's table.
    "tests/functions/test_job_events.py": frozenset(
        {
            "test_the_sandbox_raises_job_events_shaped_as_microsoft_documents_them",
            "test_a_workspace_on_shared_capacity_raises_no_job_events",
        }
    ),
}


def is_standin(path: str, function: str) -> bool:
    """True when test ``function`` of ``path`` (relative to the repository, with ``/``) checks a
    stand-in rather than the product."""
    return path in STANDIN_FILES or function in STANDIN_TESTS.get(path, frozenset())
