"""Verifiable math demo data: templated questions with checked exact answers and worked solutions,
wrong solutions from named student mistakes (preference pairs), an answer reward and answer accuracy."""
