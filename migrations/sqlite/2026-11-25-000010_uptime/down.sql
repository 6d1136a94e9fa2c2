DROP TABLE agent_uptime;
