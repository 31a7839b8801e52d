# expect: instances.web-1.ssh.User: "admin\nHost *" is not a user name
{
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; ssh.User = "admin\nHost *"; };
}
