# expect: stores."http://cache:8080".upload
# expect: runs a program
{
  stores."http://cache:8080".upload = "ssh-ng://cache?remote-program=/tmp/evil";
  systems.web = { configuration = { }; };
  instances.web-1 = { system = "web"; store = "http://cache:8080"; };
}
