# expect: keys.db-password.uploadAt
{
  keys.db-password = { text = "x"; uploadAt = "after-activation"; };
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; };
}
