# A Dancer2 app (t/apps/lib/PSGIAppsDancer.pm, plain Dancer2 0.4 code) on
# pagi-server through PAGI::App::WrapPSGI, over real sockets: routes with
# route and query parameters, a POST form, a file upload (curl -F), a
# Dancer2::Session::Simple session kept by curl's cookie jar and a
# `delayed` response streamed with flush/content/done from timers.
# PAGI_TEST_PSGI_SERVER=plackup runs the same checks on HTTP::Server::PSGI.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server;    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(slurp);
use PAGI::Test::PSGIApps qw(form_ok upload_ok need_modules start_psgi_server stop_psgi_server server_log http_request
                            curl set_cookie stream_ok);
use File::Temp ();

$SIG{PIPE} = 'IGNORE';
need_modules('Dancer2' => 'libdancer2-perl', 'Plack' => 'libplack-perl', 'AnyEvent' => 'libanyevent-perl');

my $server = start_psgi_server('t/apps/dancer2.psgi');
ok($server->{ready}, "$server->{server} runs the Dancer2 app") or do { diag($server->{error}); done_testing; exit };
my $port = $server->{port};
my $base = "http://127.0.0.1:$port";

subtest 'GET: routes, route and query parameters' => sub {
    my $r = http_request($port, 'GET', '/');
    is($r && $r->{status}, 200, 'status 200');
    is($r && $r->{body}, "Hello from Dancer2\n", 'the body of the route');
    is($r && $r->{header}{'content-type'}, 'text/plain; charset=UTF-8', 'the content type set by the app');
    like($r && $r->{header}{server}, qr/\APerl Dancer2 /, "Dancer2's own Server header");

    $r = http_request($port, 'GET', '/hello/Ada?greeting=good%20morning');
    is($r && $r->{body}, "Hello, Ada (greeting: good morning)\n", 'a route parameter and a query parameter');

    $r = http_request($port, 'GET', '/no/such/route');
    is($r && $r->{status}, 404, 'an unknown route: 404');
    like($r && $r->{body}, qr{<title>Error 404 - Not Found</title>}, "Dancer2's error page");
};

subtest 'POST form' => sub { form_ok($port) };

subtest 'file upload' => sub { upload_ok($port, $base) };

subtest 'cookie session: Dancer2::Session::Simple' => sub {
    my $jar = File::Temp->new;
    my @counts = map { curl('-c', $jar->filename, '-b', $jar->filename, "$base/counter") } 1 .. 2;
    plan skip_all => 'the curl command is not installed' if $counts[0]{missing};
    is($counts[0]{body}, "count=1\n", 'first request: count 1');
    like($counts[0]{headers}, qr/^set-cookie: dancer\.session=[\w-]+/mi, 'and a session cookie');
    is($counts[1]{body}, "count=2\n", 'second request with the cookie: the same session');
    my $fresh = http_request($port, 'GET', '/counter');
    is($fresh && $fresh->{body}, "count=1\n", 'a request without the cookie starts a new session');
    my $again = http_request($port, 'GET', '/counter', headers => [ Cookie => set_cookie($fresh, 'dancer.session') ]);
    is($again && $again->{body}, "count=2\n", 'which its own cookie finds again');
};

subtest 'delayed response streamed with flush, content and done' => sub {
    my $r = stream_ok($port, '/stream');
    like($r && $r->{header}{'content-type'}, qr{\Atext/plain\b}, 'the content type of the app');
};

is(stop_psgi_server($server), 0, 'the server stops on SIGTERM, exit status 0');
ok(!$server->{killed}, 'without needing SIGKILL');
unlike(server_log($server), qr/\berror\b/i, 'no errors logged') or diag(server_log($server));

done_testing;
