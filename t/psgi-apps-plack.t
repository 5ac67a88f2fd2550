# A Plack::Builder stack of stock Plack software (t/apps/plack-builder.psgi:
# Plack::Middleware::ContentLength, Deflater, Session and Static around
# Plack::App::File, Plack::App::Directory and a Plack::Request app mounted
# with Plack::App::URLMap), unmodified, on pagi-server through
# PAGI::App::WrapPSGI, over real sockets: GET, a POST form, a file upload
# (curl -F), a cookie session (curl's cookie jar), gzip, static files, a
# streamed and a delayed response. PAGI_TEST_PSGI_SERVER=plackup runs the
# same checks on HTTP::Server::PSGI (see t/lib/PAGI/Test/PSGIApps.pm).
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use PAGI::Test::Server;    # its import sets the alarm bounding this file
use PAGI::Test::CLI qw(start_cli stop_cli http_get_cli stderr_of slurp);
use PAGI::Test::PSGIApps qw(need_modules start_psgi_server stop_psgi_server server_log http_request
                            curl set_cookie stream_ok APPS);
use Digest::SHA ();
use File::Temp ();
use IO::Uncompress::Gunzip ();

$SIG{PIPE} = 'IGNORE';
need_modules('Plack' => 'libplack-perl', 'Plack::Middleware::Session' => 'libplack-middleware-session-perl',
    'Plack::Middleware::Deflater' => 'libplack-middleware-deflater-perl', 'AnyEvent' => 'libanyevent-perl');

my $STATIC = APPS() . '/public/static';
my $server = start_psgi_server('t/apps/plack-builder.psgi');
ok($server->{ready}, "$server->{server} runs the Plack::Builder stack") or do { diag($server->{error}); done_testing; exit };
my $port = $server->{port};
my $base = "http://127.0.0.1:$port";

sub gunzip { my ($in) = @_; IO::Uncompress::Gunzip::gunzip(\$in => \my $out) or return undef; $out }

subtest 'GET: an array body, given a Content-Length by the ContentLength middleware' => sub {
    my $r = http_request($port, 'GET', '/hello');
    is($r && $r->{status}, 200, 'status 200');
    is($r && $r->{body}, "Hello from Plack, in two pieces\n", 'both pieces of the body');
    is($r && $r->{header}{'content-length'}, 32, 'Content-Length added by Plack::Middleware::ContentLength');
    ok($r && !$r->{chunked}, 'so not chunked');
    is($r && $r->{header}{'content-type'}, 'text/plain; charset=utf-8', 'the content type of the app');

    $r = http_request($port, 'GET', '/query?a=1&a=2&b=x%20y');
    is($r && $r->{body}, "a=1,2\nb=x y\n", 'query parameters, a repeated one in order');

    $r = http_request($port, 'GET', '/nowhere');
    is($r && $r->{status}, 404, 'an unknown path: the app answers 404');
    is($r && $r->{body}, "no route for GET /nowhere\n", 'with its own body');
};

subtest 'POST form (application/x-www-form-urlencoded)' => sub {
    my $r = http_request($port, 'POST', '/form', body => 'name=Zo%C3%AB&colour=red&colour=blue',
        headers => [ 'Content-Type' => 'application/x-www-form-urlencoded' ]);
    is($r && $r->{status}, 200, 'status 200');
    is($r && $r->{body}, "name=Zo\xc3\xab\ncolours=red,blue\ncontent-type=application/x-www-form-urlencoded\n",
        'Plack::Request read every field from psgi.input');
};

subtest 'file upload with curl -F (multipart/form-data)' => sub {
    # 300 KB with every byte value, CRLFs and boundary-like dashes: more than one read of psgi.input.
    my $bytes = join '', map { chr($_ % 256) . ($_ % 1000 ? '' : "\r\n--\r\n") } 0 .. 299_999;
    my $file = File::Temp->new;
    binmode $file;
    print {$file} $bytes;
    close $file;
    my $r = curl('-F', 'title=holiday photos', '-F', "file=\@$file;filename=data.bin;type=application/x-test",
        "$base/upload");
    plan skip_all => 'the curl command is not installed' if $r->{missing};
    is($r->{exit}, 0, 'curl succeeds');
    is($r->{status}, 200, 'status 200');
    is($r->{body}, "title=holiday photos\nfilename=data.bin\ncontent-type=application/x-test\nsize="
        . length($bytes) . "\nsha1=" . Digest::SHA::sha1_hex($bytes) . "\n",
        'the upload arrives whole, with its filename, type and other field');
};

subtest 'cookie session: Plack::Middleware::Session, curl keeping the cookie' => sub {
    my $jar = File::Temp->new;
    my @counts = map { curl('-c', $jar->filename, '-b', $jar->filename, "$base/counter") } 1 .. 2;
    plan skip_all => 'the curl command is not installed' if $counts[0]{missing};
    is($counts[0]{body}, "count=1\n", 'first request: count 1');
    like($counts[0]{headers}, qr/^set-cookie: plack_session=\w+/mi, 'and a session cookie');
    is($counts[1]{body}, "count=2\n", 'second request with the cookie: the same session');
    like(slurp($jar->filename), qr/\tplack_session\t\w+$/m, 'curl kept the cookie');
    my $fresh = http_request($port, 'GET', '/counter');
    is($fresh && $fresh->{body}, "count=1\n", 'a request without the cookie starts a new session');
    my $cookie = set_cookie($fresh, 'plack_session');
    my $again = http_request($port, 'GET', '/counter', headers => [ Cookie => $cookie ]);
    is($again && $again->{body}, "count=2\n", 'which its own cookie finds again');
};

subtest 'gzip by Plack::Middleware::Deflater' => sub {
    my $plain = join '', map { "line $_ of 2000, padded to be worth compressing\n" } 1 .. 2000;
    my $r = http_request($port, 'GET', '/big', headers => [ 'Accept-Encoding' => 'gzip' ]);
    is($r && $r->{status}, 200, 'status 200');
    is($r && $r->{header}{'content-encoding'}, 'gzip', 'Content-Encoding: gzip');
    like($r && $r->{header}{vary}, qr/\bAccept-Encoding\b/i, 'Vary: Accept-Encoding');
    ok($r && length $r->{body} < length($plain) / 4, 'compressed')
        or diag(length($r->{body} // '') . ' bytes for ' . length $plain);
    ok($r && defined(my $out = gunzip($r->{body})), 'the body is valid gzip');
    is($r && gunzip($r->{body}), $plain, 'which decompresses to the whole text');

    my $identity = http_request($port, 'GET', '/big');
    ok($identity && !defined $identity->{header}{'content-encoding'}, 'without Accept-Encoding: not compressed');
    is($identity && $identity->{body}, $plain, 'the same text');
    is($identity && $identity->{header}{'content-length'}, length $plain, 'with its Content-Length');

    # A file handle body (Plack::App::File) through Deflater's streaming filter.
    my $gz_file = http_request($port, 'GET', '/hello.txt', headers => [ 'Accept-Encoding' => 'gzip' ]);
    is($gz_file && $gz_file->{header}{'content-encoding'}, 'gzip', 'a file, gzipped');
    is($gz_file && gunzip($gz_file->{body}), slurp("$STATIC/hello.txt"), 'decompresses to the file');
};

subtest 'Plack::Middleware::Static, Plack::App::File and Plack::App::Directory' => sub {
    my $r = http_request($port, 'GET', '/static/bytes.bin');
    is($r && $r->{status}, 200, 'Static: status 200');
    ok($r && $r->{body} eq slurp("$STATIC/bytes.bin"), 'Static: the binary file byte for byte');
    is($r && $r->{header}{'content-type'}, 'application/octet-stream', 'with its content type');
    is($r && $r->{header}{'content-length'}, 1024, 'and length');
    ok($r && $r->{header}{'last-modified'}, 'and Last-Modified');
    $r = http_request($port, 'GET', '/static/docs/notes.txt');
    is($r && $r->{body}, slurp("$STATIC/docs/notes.txt"), 'Static: a file in a subdirectory');
    $r = http_request($port, 'GET', '/static/missing.txt');
    is($r && $r->{status}, 404, 'Static: a missing file is 404');

    $r = http_request($port, 'GET', '/hello.txt');
    is($r && $r->{status}, 200, 'Plack::App::File mounted at /hello.txt: status 200');
    is($r && $r->{body}, slurp("$STATIC/hello.txt"), 'the file');
    is($r && $r->{header}{'content-type'}, 'text/plain; charset=utf-8', 'as text/plain');

    $r = http_request($port, 'GET', '/browse/');
    is($r && $r->{status}, 200, 'Plack::App::Directory mounted at /browse: status 200');
    like($r && $r->{body}, qr{<title>Index of /</title>}, 'an index page');
    like($r && $r->{body}, qr{<a href='/browse/\Q$_\E'>\Q$_\E</a>}, "listing $_") for qw(bytes.bin docs/ hello.txt);
    $r = http_request($port, 'GET', '/browse/docs/notes.txt');
    is($r && $r->{body}, slurp("$STATIC/docs/notes.txt"), 'and serving a file under it');
};

subtest 'streaming writer: each piece reaches the client as it is written' => sub {
    my $r = stream_ok($port, '/stream');
    is($r && $r->{header}{'content-type'}, 'text/plain', 'the content type of the app');
    ok($r && !defined $r->{header}{'content-length'}, 'no Content-Length');
};

subtest 'delayed response: the responder called later from a timer' => sub {
    my $r = http_request($port, 'GET', '/delayed');
    is($r && $r->{status}, 200, 'status 200');
    is($r && $r->{body}, "answered later\n", 'the body given to the responder');
    is($r && $r->{header}{'content-length'}, 15, 'with the Content-Length of ContentLength');
};

is(stop_psgi_server($server), 0, 'the server stops on SIGTERM, exit status 0');
ok(!$server->{killed}, 'without needing SIGKILL');
unlike(server_log($server), qr/\berror\b/i, 'no errors logged') or diag(server_log($server));

# As plackup users expect: `pagi-server app.psgi`, the runner wrapping it.
if (($ENV{PAGI_TEST_PSGI_SERVER} // '') eq '') {
    subtest 'pagi-server FILE.psgi runs the .psgi file directly' => sub {
        my $child = start_cli(['t/apps/plack-builder.psgi'], timeout => 30);
        ok($child->{ready}, 'pagi-server starts it') or return diag(stderr_of($child));
        my $r = http_get_cli($child->{port}, '/hello');
        is($r && $r->{status}, 200, 'status 200');
        is($r && $r->{body}, "Hello from Plack, in two pieces\n", 'the PSGI app answers');
        $r = http_get_cli($child->{port}, '/static/docs/notes.txt');
        is($r && $r->{body}, slurp("$STATIC/docs/notes.txt"), 'a static file too');
        is(stop_cli($child), 0, 'SIGTERM: exit status 0');
    };
}

done_testing;
