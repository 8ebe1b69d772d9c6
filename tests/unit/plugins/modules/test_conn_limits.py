"""higgs.vpn.conn_limits: planning driven by conn_limits_cases.yml, and the documentation."""

from __future__ import annotations

from owned_cases import case_tests

from ansible_collections.higgs.vpn.plugins.modules import conn_limits

(params, validate, test_invalid_input_names_the_option, test_valid_input, test_render,
 test_documented_options_match_the_argument_spec, test_examples_validate) = case_tests(conn_limits, "conn_limits")


def test_chain_names_are_stable_and_safe():
    assert conn_limits.chain_name("alice's phone") == conn_limits.chain_name("alice's phone")
    assert conn_limits.chain_name("a").startswith("c_") and len(conn_limits.chain_name("a")) == 14
