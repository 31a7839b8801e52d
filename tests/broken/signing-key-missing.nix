# expect: signingKey: /nonexistent/hive-test/missing.sec: no such file
{
  signingKey = "/nonexistent/hive-test/missing.sec";
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}
