# A Catalyst app (t/apps/lib/PSGIAppsCat.pm and its Root controller, plain
# Catalyst 5.90 code, as catalyst.pl's .psgi runs it) on pagi-server through
# PAGI::App::WrapPSGI, over real sockets: actions with path and query
# arguments, a POST form, an upload through $c->req->upload (curl -F),
# sessions by Catalyst::Plugin::Session with State::Cookie and
# Store::FastMmap kept by curl's cookie jar, and a response streamed with
# $c->res->write and then the write_fh writer from timers.
# PAGI_TEST_PSGI_SERVER=plackup runs the same checks on HTTP::Server::PSGI.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server;    # its import sets the alarm bounding this file
use PAGI::Test::PSGIApps qw(form_ok upload_ok need_modules start_psgi_server stop_psgi_server server_log http_request
                            curl set_cookie stream_ok);
use File::Temp ();

$SIG{PIPE} = 'IGNORE';
need_modules('Catalyst' => 'libcatalyst-perl', 'Catalyst::Plugin::Session' => 'libcatalyst-plugin-session-perl',
    'Catalyst::Plugin::Session::State::Cookie' => 'libcatalyst-plugin-session-state-cookie-perl',
    'Catalyst::Plugin::Session::Store::FastMmap' => 'libcatalyst-plugin-session-store-fastmmap-perl',
    'Plack' => 'libplack-perl', 'AnyEvent' => 'libanyevent-perl');

my $server = start_psgi_server('t/apps/catalyst.psgi');
ok($server->{ready}, "$server->{server} runs the Catalyst app") or do { diag($server->{error}); done_testing; exit };
my $port = $server->{port};
my $base = "http://127.0.0.1:$port";

subtest 'GET: actions, path and query arguments' => sub {
    my $r = http_request($port, 'GET', '/');
    is($r && $r->{status}, 200, 'status 200');
    is($r && $r->{body}, "Hello from Catalyst\n", 'the index action');
    is($r && $r->{header}{'content-type'}, 'text/plain; charset=utf-8', 'the content type set by the app');
    is($r && $r->{header}{'content-length'}, 20, 'the Content-Length Catalyst computes');

    $r = http_request($port, 'GET', '/hello/Ada?greeting=good%20morning');
    is($r && $r->{body}, "Hello, Ada (greeting: good morning)\n", 'an :Args(1) argument and a query parameter');

    $r = http_request($port, 'GET', '/no/such/action');
    is($r && $r->{status}, 404, 'an unknown path: the default action answers 404');
    is($r && $r->{body}, "no action for no/such/action\n", 'with its body');
};

subtest 'POST form' => sub { form_ok($port) };

subtest 'file upload through $c->req->upload' => sub { upload_ok($port, $base) };

subtest 'cookie session: Session, State::Cookie, Store::FastMmap' => sub {
    my $jar = File::Temp->new;
    my @counts = map { curl('-c', $jar->filename, '-b', $jar->filename, "$base/counter") } 1 .. 2;
    plan skip_all => 'the curl command is not installed' if $counts[0]{missing};
    is($counts[0]{body}, "count=1\n", 'first request: count 1');
    like($counts[0]{headers}, qr/^set-cookie: psgiappscat_session=\w+/mi, 'and a session cookie');
    is($counts[1]{body}, "count=2\n", 'second request with the cookie: the same session');
    my $fresh = http_request($port, 'GET', '/counter');
    is($fresh && $fresh->{body}, "count=1\n", 'a request without the cookie starts a new session');
    my $again = http_request($port, 'GET', '/counter',
        headers => [ Cookie => set_cookie($fresh, 'psgiappscat_session') ]);
    is($again && $again->{body}, "count=2\n", 'which its own cookie finds again');
};

subtest 'streaming with $c->res->write and write_fh' => sub {
    my $r = stream_ok($port, '/stream');
    is($r && $r->{header}{'content-type'}, 'text/plain', 'the content type of the app');
};

is(stop_psgi_server($server), 0, 'the server stops on SIGTERM, exit status 0');
ok(!$server->{killed}, 'without needing SIGKILL');
unlike(server_log($server), qr/\berror\b/i, 'no errors logged') or diag(server_log($server));

done_testing;
