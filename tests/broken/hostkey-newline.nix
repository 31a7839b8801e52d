# expect: instances.web-1.hostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh4\n* ssh-rsa AAAA" is not a public host key
{
  systems.web = { configuration = { }; };
  instances.web-1 = {
    system = "web";
    hostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh4\n* ssh-rsa AAAA";
  };
}
