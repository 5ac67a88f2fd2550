# A Plack::Builder stack of stock Plack parts, for t/psgi-apps-plack.t:
# Plack::Middleware::ContentLength, Deflater, Session and Static around a
# Plack::App::URLMap (builder's `mount`) holding Plack::App::File,
# Plack::App::Directory and a small Plack::Request app. Nothing here knows
# which server runs it.
use strict;
use warnings;
use Cwd ();
use File::Basename ();
my $HERE;
BEGIN { $HERE = File::Basename::dirname(Cwd::abs_path(__FILE__)) }
use lib "$HERE/lib";

use Digest::SHA ();
use Plack::App::Directory;
use Plack::App::File;
use Plack::Builder;
use Plack::Request;
use Time::HiRes ();
use PSGIAppsLater qw(later);

my $PUBLIC = "$HERE/public";

sub text { [ 200, [ 'Content-Type' => 'text/plain; charset=utf-8' ], [@_] ] }

my %ROUTE = (
    # Two pieces and no Content-Length: the ContentLength middleware adds it.
    'GET /hello' => sub { text('Hello from Plack, ', "in two pieces\n") },

    'GET /query' => sub {
        my ($req) = @_;
        my $q = $req->query_parameters;
        text(join '', map { "$_=" . join(',', $q->get_all($_)) . "\n" } sort keys %$q);
    },

    'POST /form' => sub {
        my ($req) = @_;
        my $p = $req->body_parameters;
        text("name=" . $p->get('name') . "\ncolours=" . join(',', $p->get_all('colour')) . "\n"
            . 'content-type=' . $req->content_type . "\n");
    },

    'POST /upload' => sub {
        my ($req) = @_;
        my $upload = $req->uploads->{file} or return [ 400, [ 'Content-Type' => 'text/plain' ], ["no file field\n"] ];
        open my $fh, '<:raw', $upload->path or die "upload $upload->{path}: $!";
        my $sha = Digest::SHA->new(1)->addfile($fh)->hexdigest;
        text("title=" . $req->body_parameters->get('title') . "\nfilename=" . $upload->filename
            . "\ncontent-type=" . $upload->content_type . "\nsize=" . $upload->size . "\nsha1=$sha\n");
    },

    # Plack::Middleware::Session's in-memory store, found again by its cookie.
    'GET /counter' => sub {
        my ($req) = @_;
        my $session = $req->env->{'psgix.session'};
        $session->{count}++;
        text("count=$session->{count}\n");
    },

    # Compressible text for the Deflater middleware.
    'GET /big' => sub { text(map { "line $_ of 2000, padded to be worth compressing\n" } 1 .. 2000) },

    # The streaming writer: each piece says when it was written.
    'GET /stream' => sub {
        my ($req) = @_;
        return sub {
            my ($respond) = @_;
            my $writer = $respond->([ 200, [ 'Content-Type' => 'text/plain' ] ]);
            $writer->write(sprintf "first at %.6f\n", Time::HiRes::time);
            later($req->env, 0.6, sub {
                $writer->write(sprintf "second at %.6f\n", Time::HiRes::time);
                later($req->env, 0.3, sub {
                    $writer->write("done\n");
                    $writer->close;
                });
            });
        };
    },

    # A delayed response: the responder is called from a timer, whole.
    'GET /delayed' => sub {
        my ($req) = @_;
        return sub {
            my ($respond) = @_;
            later($req->env, 0.3, sub { $respond->(text("answered later\n")) });
        };
    },
);

my $app = sub {
    my ($env) = @_;
    my $req = Plack::Request->new($env);
    my $route = $ROUTE{ $req->method . ' ' . $req->path_info }
        or return [ 404, [ 'Content-Type' => 'text/plain' ], [ "no route for " . $req->method . ' ' . $req->path_info . "\n" ] ];
    return $route->($req);
};

builder {
    enable 'ContentLength';
    enable 'Deflater', content_type => [ 'text/plain', 'text/html' ], vary_user_agent => 0;
    enable 'Session';
    enable 'Static', path => qr{^/static/}, root => $PUBLIC;
    mount '/hello.txt' => Plack::App::File->new(file => "$PUBLIC/static/hello.txt")->to_app;
    mount '/browse'    => Plack::App::Directory->new(root => "$PUBLIC/static")->to_app;
    mount '/'          => $app;
};
